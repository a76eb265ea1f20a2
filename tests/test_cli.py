"""The ``continual`` command end to end, in a subprocess, on a tiny random model and a temporary MLflow store."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient


def _stream_yaml(conf: Path, files, **task_extra) -> None:
    """A user-written stream file ``conf/stream/two_tasks.yaml`` over the given files."""
    (conf / "stream").mkdir(parents=True, exist_ok=True)
    tasks = [{"name": name, "train": str(paths["train"]), "test": str(paths["test"]), **task_extra}
             for name, paths in files.items()]
    (conf / "stream" / "two_tasks.yaml").write_text(yaml.safe_dump({"name": "two_tasks", "tasks": tasks}))


def _run(tmp_path, tiny_model_dir, *overrides, conf=None):
    args = [sys.executable, "-m", "continual", "stream=two_tasks", f"backbone.name={tiny_model_dir}",
            "trainer.epochs=1", "adapter.bottleneck_dim=4", "progress=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/run", *overrides]
    if conf is not None:
        args[3:3] = ["--config-dir", str(conf)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _runs(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("continual")
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


def test_two_task_stream_through_the_cli_into_mlflow(tmp_path, tiny_model_dir, demo_files):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, demo_files, max_per_class=20)
    proc = _run(tmp_path, tiny_model_dir, "stream.order=[1,0]", "seed=3", conf=conf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ACC (avg accuracy)" in proc.stdout and "mlflow ui --backend-store-uri sqlite:" in proc.stdout

    client, runs = _runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["stream.order"] == "[1, 0]" and run.data.params["seed"] == "3"
    assert run.data.tags["stream"] == "two_tasks"
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
               for k in ("acc/travel", "acc/banking", "avg_acc", "bwt", "forgetting")}
    assert [s for s, _ in history["acc/travel"]] == [0, 1]  # travel is learned first
    assert [s for s, _ in history["acc/banking"]] == [1]
    assert history["acc/travel"][0][1] == history["acc/travel"][1][1]
    assert history["bwt"] == [(1, 0.0)] and history["forgetting"] == [(1, 0.0)]
    assert client.get_metric_history(run.info.run_id, "train_loss/travel")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"accuracy_matrix.csv", "accuracy_matrix.png", "accuracy_curves.png", "config.yaml", "adapters"} <= artifacts
    adapters = {a.path for a in client.list_artifacts(run.info.run_id, "adapters")}
    assert adapters == {"adapters/00_travel.safetensors", "adapters/01_banking.safetensors"}
    csv_text = (tmp_path / "run" / "accuracy_matrix.csv").read_text().splitlines()
    assert csv_text[0] == "travel,banking"


@pytest.mark.parametrize("task_extra, message, creates_run", [
    ({"lables": ["a"]}, "unknown field 'lables'", False),
    ({"text_field": "utterance"}, "text_field 'utterance' is not a column", True),
    ({"labels": ["check_balance", "no_such_label"]}, "names ['no_such_label'] which do not occur", True),
])
def test_bad_input_is_one_line_and_marks_the_run_failed(tmp_path, tiny_model_dir, demo_files, task_extra, message,
                                                        creates_run):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, {"banking": demo_files["banking"]}, **task_extra)
    proc = _run(tmp_path, tiny_model_dir, conf=conf)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == (["FAILED"] if creates_run else [])


def test_missing_data_file_and_unknown_option(tmp_path, tiny_model_dir, demo_files):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, {"banking": {"train": tmp_path / "nope.csv", "test": demo_files["banking"]["test"]}})
    proc = _run(tmp_path, tiny_model_dir, conf=conf)
    assert proc.returncode == 2 and f"file not found: {tmp_path / 'nope.csv'}" in proc.stderr
    proc = _run(tmp_path, tiny_model_dir, "router=psychic", conf=conf)
    assert proc.returncode == 2 and "error: router=psychic: no such option; router options: oracle" in proc.stderr


def test_unreachable_tracking_server_fails_fast(tmp_path, tiny_model_dir, demo_files):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, demo_files)
    proc = _run(tmp_path, tiny_model_dir, "tracking.uri=http://127.0.0.1:9", conf=conf)
    assert proc.returncode == 2
    assert "no MLflow server answers at http://127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr
