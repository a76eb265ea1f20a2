"""Multiruns through real Hydra launchers into one MLflow store: parent/child runs, nothing lost."""

import importlib.util
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from continual.commands import cmdline
from continual.errors import ContinualError
from continual.tracking.store import free_port as _free_port
from continual.tracking.store import serve

from conftest import main_in_process, stream_yaml


def _args(tmp_path, tiny_model_dir, conf, uri, *overrides, sweep="sweep"):
    return [
        "--config-dir",
        str(conf),
        "-m",
        "stream=two_tasks",
        f"backbone.name={tiny_model_dir}",
        "trainer.epochs=1",
        "adapter.bottleneck_dim=4",
        "progress=false",
        "threads=1",
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={tmp_path}/{sweep}",
        *overrides,
    ]


def _multirun(tmp_path, tiny_model_dir, conf, uri, *overrides, timeout=600, sweep="sweep"):
    """A multirun in a subprocess: launchers that start processes of their own need a real main module."""
    args = [sys.executable, "-m", "continual", *_args(tmp_path, tiny_model_dir, conf, uri, *overrides, sweep=sweep)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _check_sweep(uri, jobs, task_names=("banking", "travel")):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("continual")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == jobs
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == jobs
    assert sorted(int(c.data.tags["job"]) for c in children) == list(range(jobs))
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"stream", "learner", "router", "adapter", "seed", "order"} <= set(child.data.tags)
        for name in task_names:
            assert f"acc/{name}" in child.data.metrics
        logs = [a.path for a in client.list_artifacts(child.info.run_id) if a.path.endswith(".log")]
        assert logs, "the job's log file is attached to its run"
    return parent, children


@pytest.fixture
def sweep_conf(tmp_path, demo_files):
    return stream_yaml(tmp_path / "my_conf", demo_files, max_per_class=8)


@pytest.mark.slow  # real processes and signals: minutes on 2 cores (bash scripts/test.sh slow)
def test_parallel_joblib_jobs_into_a_brand_new_sqlite_store(tmp_path, tiny_model_dir, sweep_conf):
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    proc = _multirun(
        tmp_path, tiny_model_dir, sweep_conf, uri, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, children = _check_sweep(uri, 2)
    assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]


@pytest.mark.slow  # ~35 s; the basic and joblib launchers stay in the default suite
def test_submitit_local_launcher(tmp_path, tiny_model_dir, sweep_conf):
    uri = f"sqlite:///{tmp_path}/submitit.db"
    proc = _multirun(tmp_path, tiny_model_dir, sweep_conf, uri, "hydra/launcher=submitit_local", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_sweep(uri, 2)


def test_a_failed_job_does_not_stop_the_sweep_but_fails_its_parent_run(
    tmp_path, tiny_model_dir, sweep_conf, monkeypatch, capsys, caplog
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # the basic launcher: jobs in turn, here in this process
    caplog.set_level("INFO")
    proc = main_in_process(
        monkeypatch,
        capsys,
        *_args(tmp_path, tiny_model_dir, sweep_conf, uri, "hydra/launcher=basic", "trainer.lr=-1,0.01"),
    )
    assert proc.returncode == 2
    assert "job 1 after task 2/2" in caplog.text  # log lines say which job is where
    assert "error: job 0: trainer.lr must be a positive number" in proc.stderr
    assert "error: 1 of 2 jobs of the sweep" in proc.stderr and "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("continual").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FAILED" and parent[0].data.metrics["jobs"] == 2
    assert [c.info.status for c in children] == ["FINISHED"]  # job 1 still ran


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None, reason="pip install 'continual[ray]'"
)
def test_ray_launcher(tmp_path, tiny_model_dir, sweep_conf):
    uri = f"sqlite:///{tmp_path}/ray.db"
    proc = _multirun(tmp_path, tiny_model_dir, sweep_conf, uri, "hydra/launcher=ray", "seed=0,1", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_sweep(uri, 2)


def test_missing_launcher_plugin_names_the_extra(monkeypatch):
    monkeypatch.setitem(cmdline.LAUNCHER_PLUGINS, "joblib", ("hydra_plugins.no_such_launcher", "joblib"))
    with pytest.raises(ContinualError, match=r"hydra/launcher=joblib needs its Hydra plugin.*continual\[joblib\]"):
        cmdline.check_config_files(["-m", "hydra/launcher=joblib", "seed=0,1"])


@pytest.mark.slow  # a real server: 10-20 s to start
def test_runs_and_multiruns_against_a_real_tracking_server(tmp_path, tiny_model_dir, sweep_conf):
    server, uri = serve(f"sqlite:///{tmp_path}/server.db", tmp_path / "art")
    try:
        proc = _multirun(tmp_path, tiny_model_dir, sweep_conf, uri, "seed=0,1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        parent, children = _check_sweep(uri, 2)
        client = MlflowClient(tracking_uri=uri)
        assert "accuracy_matrix.csv" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_multirun_against_an_unreachable_server_fails_in_seconds_before_any_job(
    tmp_path, tiny_model_dir, sweep_conf, monkeypatch, capsys
):
    start = time.time()
    proc = main_in_process(
        monkeypatch,
        capsys,
        *_args(tmp_path, tiny_model_dir, sweep_conf, f"http://127.0.0.1:{_free_port()}", "seed=0,1"),
    )
    assert proc.returncode == 2 and "cannot open the MLflow store" in proc.stderr and "no MLflow server" in proc.stderr
    assert time.time() - start < 60 and not (tmp_path / "sweep" / "0").exists()  # no job started
