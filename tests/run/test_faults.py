"""Faults that could lose or duplicate data: signals, two writers on one folder, a full disk, finished runs.

Signals and locks need real processes; everything else runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from continual.errors import ContinualError
from continual.files import RunLock

from conftest import (
    compose,
    copy_run,
    demo_task_files,
    main_in_process,
    mlflow_runs,
    one_error_line,
    run_in_process,
    stream_yaml,
    tiny_overrides,
    write_jsonl,
)

TASKS = ("banking", "travel", "cooking")


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "continual", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def _wait_for(path: Path, ready, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until ``ready(path)`` holds (the process must still be running meanwhile)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if path.is_file() and ready(path):
                assert process.poll() is None, f"the process ended before it could be stopped ({path} was ready)"
                return
        except (ValueError, KeyError):
            pass  # read while being replaced
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.02)
    raise AssertionError(f"{path} never got ready")


def _completed(n: int):
    return lambda path: json.loads(path.read_text())["completed"] >= n


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # real processes and signals: minutes on 2 cores (bash scripts/test.sh slow)
def test_sigterm_marks_the_run_killed_and_of_two_resumes_one_completes_it(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    conf = stream_yaml(tmp_path / "conf", demo_task_files(tmp_path, TASKS), name="three")
    run = tmp_path / "run"
    args = [
        "--config-dir",
        str(conf),
        "stream=three",
        *tiny_overrides(tmp_path, tiny_model_dir, "router=oracle"),
        "trainer.epochs=12",
        "trainer.lr=2e-2",
        f"hydra.run.dir={run}",
    ]
    victim = _start(tmp_path, *args)
    _wait_for(run / "checkpoint.json", _completed(1), victim)
    victim.send_signal(signal.SIGTERM)  # as SLURM and Kubernetes do before they kill
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("terminated (SIGTERM): the run was marked KILLED")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (killed,) = mlflow_runs(uri)
    assert killed.info.status == "KILLED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert any(a.path.endswith(".log") for a in client.list_artifacts(killed.info.run_id))  # its log is attached

    first, second = _start(tmp_path, "resume", str(run), "progress=false"), _start(tmp_path, "resume", str(run))
    outcomes = sorted([(p.wait(timeout=300), p.communicate()[1]) for p in (first, second)], key=lambda o: o[0])
    assert [code for code, _ in outcomes] == [0, 2], outcomes[1][1][-2000:]
    assert (
        "is in use by another continual process (PID" in outcomes[1][1] or "the run is finished" in outcomes[1][1]
    )  # the loser came too late for the lock
    (done,) = mlflow_runs(uri)
    assert done.info.status == "FINISHED" and done.info.run_id == killed.info.run_id
    for j, name in enumerate(TASKS):  # every step once: nothing lost, nothing logged twice
        assert sorted(m.step for m in client.get_metric_history(done.info.run_id, f"acc/{name}")) == list(range(j, 3))
    losses = [m.step for m in client.get_metric_history(done.info.run_id, "train_loss")]
    assert len(losses) == len(set(losses))

    before = {p.name: _digest(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    line = one_error_line(main_in_process(monkeypatch, capsys, "resume", run))
    assert "the run is finished (3 of 3 tasks learned); there is nothing to resume" in line
    assert {p.name: _digest(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert client.get_run(done.info.run_id).info.end_time == done.info.end_time


# basic: jobs run in turn in the launching process, Ctrl-C lands in job 1, whose second task must outlast the
# signal: the sweep gives job 1 ten times job 0's epochs (a shared epoch count of 40 still lost the race on
# busy machines); joblib: both jobs run in worker processes that die with the launcher when it gets SIGTERM,
# so it ends their runs itself
LAUNCHES = {
    "basic": (
        ["hydra/launcher=basic", "trainer.epochs=20,200"],
        signal.SIGINT,
        130,
        "interrupted",
        {"0": "FINISHED", "1": "KILLED"},
    ),
    "joblib": (
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1", "seed=0,1", "trainer.epochs=40"],
        signal.SIGTERM,
        143,
        "terminated (SIGTERM)",
        {"0": "KILLED", "1": "KILLED"},
    ),
}


@pytest.mark.slow  # real processes and signals: minutes on 2 cores (bash scripts/test.sh slow)
@pytest.mark.parametrize("launcher", sorted(LAUNCHES))
def test_an_interrupted_multirun_closes_its_parent_and_resuming_its_jobs_finishes_it(
    launcher, tmp_path, tiny_model_dir, monkeypatch, capsys
):
    options, signum, code, said, killed = LAUNCHES[launcher]
    conf = stream_yaml(tmp_path / "conf", demo_task_files(tmp_path, TASKS[:2]))
    sweep = tmp_path / "sweep"
    sweeper = _start(
        tmp_path,
        "--config-dir",
        str(conf),
        "-m",
        "stream=two_tasks",
        *tiny_overrides(tmp_path, tiny_model_dir, "router=oracle"),
        f"hydra.sweep.dir={sweep}",
        *options,
    )
    for job in sorted(killed):  # every job that should be hit is training
        _wait_for(sweep / job / "checkpoint.json", lambda path: True, sweeper)
    sweeper.send_signal(signum)
    _, err = sweeper.communicate(timeout=120)
    assert sweeper.returncode == code and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"{said}: the run was marked KILLED")
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def statuses():
        runs = mlflow_runs(uri)
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        jobs = {r.data.tags["job"]: r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
        return parent[0], jobs

    parent, jobs = statuses()
    assert parent.info.status == "KILLED" and jobs == killed
    for job in (j for j, status in killed.items() if status == "KILLED"):
        assert main_in_process(monkeypatch, capsys, "resume", sweep / job, "progress=false").returncode == 0
    parent, jobs = statuses()
    assert jobs == {"0": "FINISHED", "1": "FINISHED"}
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 2


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    overrides = ["stream.max_per_class=4", *tiny_overrides(tmp_path, tiny_model_dir, "router=oracle")]
    with (
        RunLock(run),
        pytest.raises(ContinualError, match=f"is in use by another continual process \\(PID {os.getpid()}\\)"),
    ):
        run_in_process(run, overrides)
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\nfrom continual.files import RunLock\n"
            "with RunLock(sys.argv[1]):\n    os.kill(os.getpid(), 9)",
            str(run),
        ],
        timeout=120,
    )
    assert holder.returncode == -9
    run_in_process(run, overrides)  # the lock died with its process
    assert json.loads((run / "checkpoint.json").read_text())["finished"] is True


def test_default_run_folders_carry_the_process_id():
    hydra = compose([]).hydra
    assert str(hydra.run.dir).endswith(f"-{os.getpid()}") and str(hydra.sweep.dir).endswith(f"-{os.getpid()}")


def test_a_full_disk_fails_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if "01_" in Path(filename).name:
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, message: "No space left on device" })'
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(ContinualError) as err:
        run_in_process(run, ["stream.max_per_class=4", *tiny_overrides(tmp_path, tiny_model_dir, "router=oracle")])
    assert "01_travel.safetensors: cannot write" in str(err.value) and "No space left" in str(err.value)
    assert "\n" not in str(err.value)
    (failed,) = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert failed.info.status == "FAILED"
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["completed"] == 1 and not state["finished"]  # resumable from task 2
    assert sorted(p.name for p in (run / "adapters").iterdir()) == ["00_banking.safetensors"]  # no temp files


def test_texts_beyond_the_position_limit_are_cut_in_training_and_predict(
    tmp_path, tiny_model_dir, monkeypatch, capsys, caplog
):
    long = " ".join(["balance"] * 300)  # the tiny BERT has 64 positions
    files = demo_task_files(tmp_path, TASKS[:2])
    for split in ("train", "test"):
        rows = [json.loads(line) for line in files["banking"][split].read_text().splitlines()]
        write_jsonl(files["banking"][split], [*rows, {"text": long, "label": "check_balance"}])
    conf = stream_yaml(tmp_path / "conf", files, max_per_class=10)
    run = tmp_path / "run"
    caplog.set_level("WARNING")
    proc = main_in_process(
        monkeypatch,
        capsys,
        "--config-dir",
        conf,
        "stream=two_tasks",
        "trainer.max_length=100000",
        *tiny_overrides(tmp_path, tiny_model_dir),
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainer.max_length=100000 is more than backbone" in caplog.text and "cut to 64 tokens" in caplog.text
    proc = main_in_process(monkeypatch, capsys, "predict", run, "--text", long, "--task", "banking", "--no-progress")
    assert proc.returncode == 0 and json.loads(proc.stdout)["label"] is not None


def test_predict_and_report_check_their_paths_before_any_work(finished_run, tmp_path, monkeypatch, capsys):
    from continual.run import assemble

    def refuse(config):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(assemble, "backbone", refuse)
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "a-file").write_text("x")
    cases = [
        (("predict", finished_run, "--text", "", "--no-progress"), "--text: text 1 is empty"),
        (("predict", finished_run, "--text", "hi", "--output", tmp_path / "folder"), "is a folder; give a file path"),
        (("predict", finished_run, "--input", tmp_path / "binary.txt"), "binary.txt line 1 is not UTF-8 text"),
        (("predict", "0" * 32, "--text", "hi"), f"no MLflow store at {tmp_path / 'runs' / 'mlflow.db'}"),
        (("report", "continual", "--output", tmp_path / "a-file"), "is a file; give a folder"),
    ]
    monkeypatch.chdir(tmp_path)
    for args, message in cases:
        proc = main_in_process(monkeypatch, capsys, *args)
        assert message in one_error_line(proc) and proc.stdout == ""
    assert not (tmp_path / "runs").exists()  # a run id without a store creates no store


def test_predict_writes_its_output_file_whole_creating_its_folder(finished_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "new" / "folder" / "labels.jsonl"
    proc = main_in_process(
        monkeypatch, capsys, "predict", finished_run, "--text", "what is my balance", "--output", out, "--no-progress"
    )
    assert proc.returncode == 0 and [json.loads(line)["text"] for line in out.read_text().splitlines()] == [
        "what is my balance"
    ]
    assert [p.name for p in out.parent.iterdir()] == ["labels.jsonl"]


def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    run = copy_run(finished_run, tmp_path / "run")
    uri = f"sqlite:///{finished_run.parent / 'mlflow.db'}"
    (before,) = mlflow_runs(uri)
    files = {p.name: _digest(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert "there is nothing to resume" in one_error_line(main_in_process(monkeypatch, capsys, "resume", run))
    assert {p.name: _digest(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"} == files
    after = MlflowClient(tracking_uri=uri).get_run(before.info.run_id)
    assert (after.info.status, after.info.end_time, after.data.metrics) == (
        before.info.status,
        before.info.end_time,
        before.data.metrics,
    )


def test_a_dataset_row_inserted_by_a_parallel_job_is_retried_not_fatal():
    """Two sweep jobs logging the same data at once: MLflow's loser gets UNIQUE constraint failed."""
    from mlflow.exceptions import MlflowException

    from continual.tracking.mlflow import _retry_on_race

    calls = []

    def flaky(error: str, fails: int):
        def call():
            calls.append(error)
            if len(calls) <= fails:
                raise MlflowException(error)

        return call

    _retry_on_race(flaky("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.name", 2))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException, match="no such table"):
        _retry_on_race(flaky("no such table: datasets", 1))
    assert len(calls) == 1  # not a race: not retried
    calls.clear()
    with pytest.raises(MlflowException, match="duplicate key"):
        _retry_on_race(flaky("duplicate key value violates unique constraint", 10), attempts=3)
    assert len(calls) == 3
