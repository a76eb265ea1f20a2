"""Checkpoints and resume: SIGKILL a real run in task 2 of 3, resume it, compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from continual.adapters import BottleneckConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.training import TrainerConfig
from continual.routers import OracleRouter
from continual.run.experiment import RunOptions, run_stream
from continual.streams import DemoStream
from continual.tracking import MemoryTracker

from conftest import (
    demo_task_files,
    histories,
    main_in_process,
    mlflow_runs,
    one_error_line,
    stream_yaml,
    tiny_overrides,
)

TASKS = ("banking", "travel", "cooking")


@pytest.fixture
def three(tmp_path):
    """A config folder with stream ``three`` (banking, travel, cooking as files)."""
    return stream_yaml(tmp_path / "conf", demo_task_files(tmp_path, TASKS), name="three")


def _args(tmp_path, conf, model_dir, run_dir, epochs=1):
    return [
        "--config-dir",
        str(conf),
        "stream=three",
        *tiny_overrides(tmp_path, model_dir),
        f"trainer.epochs={epochs}",
        "trainer.lr=2e-2",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow  # real processes and signals: minutes on 2 cores (bash scripts/test.sh slow)
def test_sigkill_in_task_two_then_resume_equals_an_uninterrupted_run(
    tmp_path, tiny_model_dir, three, monkeypatch, capsys
):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = main_in_process(monkeypatch, capsys, *_args(tmp_path, three, tiny_model_dir, whole, epochs=12))
    assert proc.returncode == 0, proc.stderr[-2000:]

    victim = subprocess.Popen(
        [sys.executable, "-m", "continual", *_args(tmp_path, three, tiny_model_dir, killed, 12)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        state = killed / "checkpoint.json"
        if state.is_file() and json.loads(state.read_text())["completed"] == 1:
            break
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)  # task 2 starts right after task 1's checkpoint
    victim.wait()
    assert json.loads((killed / "checkpoint.json").read_text())["completed"] == 1

    resumed = main_in_process(monkeypatch, capsys, "resume", killed, "progress=false")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    R_whole = json.loads((whole / "results.json").read_text())["R"]
    assert json.loads((killed / "results.json").read_text())["R"] == R_whole

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = mlflow_runs(uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # resumed in the same MLflow run
    whole_id = json.loads((whole / "checkpoint.json").read_text())["run_id"]
    killed_id = json.loads((killed / "checkpoint.json").read_text())["run_id"]
    assert {whole_id, killed_id} == {r.info.run_id for r in runs}
    h_whole, h_killed = histories(uri, whole_id), histories(uri, killed_id)
    assert h_killed == h_whole
    for j, name in enumerate(TASKS):
        assert [s for s, _ in h_killed[f"acc/{name}"]] == list(range(j, 3))  # one value per step, none missing


def test_resume_refuses_a_changed_config_and_a_plain_rerun_refuses_an_existing_run(
    tmp_path, tiny_model_dir, three, monkeypatch, capsys
):
    run = tmp_path / "run"
    args = _args(tmp_path, three, tiny_model_dir, run)
    assert main_in_process(monkeypatch, capsys, *args).returncode == 0
    assert "already holds a run" in one_error_line(main_in_process(monkeypatch, capsys, *args))
    line = one_error_line(main_in_process(monkeypatch, capsys, "resume", run))
    assert "the run is finished (3 of 3 tasks learned); there is nothing to resume" in line
    state = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**state, "finished": False}))  # as if killed at the very end
    line = one_error_line(main_in_process(monkeypatch, capsys, *args, "resume=true", "trainer.lr=0.5"))
    assert "config differs" in line and "trainer.lr" in line
    line = one_error_line(main_in_process(monkeypatch, capsys, "resume", run, "trainer.lr=0.5"))
    assert "'trainer.lr=0.5': a resumed run keeps its config" in line


def test_same_seed_same_matrix_on_cpu(tiny_backbone, tmp_path):
    def once(out):
        learner = AdapterPerTask(
            tiny_backbone,
            BottleneckConfig(bottleneck_dim=8),
            TrainerConfig(epochs=2, batch_size=16, lr=2e-2),
            AdapterPerTaskConfig(progress=False),
            seed=7,
        )
        return run_stream(
            DemoStream(max_per_class=12).load(),
            learner,
            OracleRouter(),
            MemoryTracker(),
            RunOptions(out, progress=False),
        ).state.R

    a, b = once(tmp_path / "a"), once(tmp_path / "b")
    np.testing.assert_array_equal(a, b)


def test_adapters_refuse_a_different_backbone(tiny_backbone, tmp_path):
    from continual.errors import ContinualError

    stream = DemoStream(max_per_class=8).load()
    learner = AdapterPerTask(
        tiny_backbone, BottleneckConfig(bottleneck_dim=8), TrainerConfig(epochs=1), AdapterPerTaskConfig(progress=False)
    )
    learner.learn([stream.tasks[0]])
    learner.save(tmp_path)
    other = AdapterPerTask(
        tiny_backbone,
        BottleneckConfig(bottleneck_dim=16),
        TrainerConfig(epochs=1),
        AdapterPerTaskConfig(progress=False),
    )
    with pytest.raises(ContinualError, match="saved for adapter="):
        other.load(tmp_path, stream.tasks[:1])
    tiny_backbone.name = "another-model"
    with pytest.raises(ContinualError, match="saved for backbone="):
        AdapterPerTask(
            tiny_backbone,
            BottleneckConfig(bottleneck_dim=8),
            TrainerConfig(epochs=1),
            AdapterPerTaskConfig(progress=False),
        ).load(tmp_path, stream.tasks[:1])


@pytest.mark.slow  # real processes and signals: minutes on 2 cores (bash scripts/test.sh slow)
def test_a_copied_folder_may_not_resume_into_the_original_mlflow_run(
    tmp_path, tiny_model_dir, three, monkeypatch, capsys
):
    """``cp -a RUN COPY``: COPY names RUN's MLflow run, which belongs to RUN. Resuming COPY is refused in one line
    (it would log duplicate steps into RUN's history) unless asked for a new MLflow run; nothing is ever written
    to a FINISHED MLflow run."""
    import shutil

    from mlflow.tracking import MlflowClient

    run, copy = tmp_path / "run", tmp_path / "copy"
    args = [*_args(tmp_path, three, tiny_model_dir, run), "+stream.max_per_class=6"]
    assert main_in_process(monkeypatch, capsys, *args).returncode == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    state = json.loads((run / "checkpoint.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(state["run_id"]).data.tags["continual.folder"] == str(run.resolve())
    shutil.copytree(run, copy)
    unfinished = {**state, "finished": False, "completed": 2}
    (copy / "checkpoint.json").write_text(json.dumps(unfinished))
    line = one_error_line(main_in_process(monkeypatch, capsys, "resume", copy, "progress=false"))
    assert f"MLflow run {state['run_id']} is FINISHED: nothing more is written to it" in line
    client.set_terminated(state["run_id"], "KILLED")  # as if RUN had been stopped in its last task
    before = histories(uri, state["run_id"])
    line = one_error_line(main_in_process(monkeypatch, capsys, "resume", copy, "progress=false"))
    assert f"{copy.resolve()} is a copy or a move of {run.resolve()}, whose MLflow run" in line
    assert "--new-run" in line and histories(uri, state["run_id"]) == before
    assert client.get_run(state["run_id"]).info.status == "KILLED"  # refused before the run was reopened
    assert main_in_process(monkeypatch, capsys, "resume", copy, "--new-run", "progress=false").returncode == 0
    moved = json.loads((copy / "checkpoint.json").read_text())["run_id"]
    assert moved != state["run_id"] and client.get_run(moved).data.tags["continued_from"] == state["run_id"]
    assert client.get_run(moved).data.tags["continual.folder"] == str(copy.resolve())
    (run / "checkpoint.json").write_text(json.dumps(unfinished))  # the original itself still resumes its run
    assert main_in_process(monkeypatch, capsys, "resume", run, "progress=false").returncode == 0
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
