"""Checkpoints and resume: SIGKILL a real run in task 2 of 3, resume it, compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from continual.adapters import BottleneckConfig
from continual.experiment import run_stream
from continual.learners import AdapterPerTask
from continual.routers import OracleRouter
from continual.streams import DemoStream
from continual.tracking import MemoryTracker
from continual.training import TrainerConfig

TASKS = ("banking", "travel", "cooking")


def _conf(tmp_path, demo_files_3):
    conf = tmp_path / "conf"
    (conf / "stream").mkdir(parents=True)
    tasks = [{"name": n, "train": str(p["train"]), "test": str(p["test"])} for n, p in demo_files_3.items()]
    (conf / "stream" / "three.yaml").write_text(yaml.safe_dump({"name": "three", "tasks": tasks}))
    return conf


def _args(tmp_path, conf, model_dir, run_dir):
    return [sys.executable, "-m", "continual", "--config-dir", str(conf), "stream=three", f"backbone.name={model_dir}",
            "trainer.epochs=40", "trainer.lr=2e-2", "adapter.bottleneck_dim=4", "progress=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={run_dir}"]


def _histories(client, run_id):
    keys = [m for m in client.get_run(run_id).data.metrics]
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys if not k.endswith(("seconds", "_per_s"))}


@pytest.fixture
def demo_files_3(tmp_path):
    from continual.streams.demo_data import demo_examples

    files = {}
    for task in TASKS:
        files[task] = {}
        for split in ("train", "test"):
            path = tmp_path / "data" / f"{task}_{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in demo_examples(task, split)))
            files[task][split] = path
    return files


def test_sigkill_in_task_two_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, demo_files_3):
    conf = _conf(tmp_path, demo_files_3)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    started = time.perf_counter()
    proc = subprocess.run(_args(tmp_path, conf, tiny_model_dir, whole), capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    victim = subprocess.Popen(_args(tmp_path, conf, tiny_model_dir, killed), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:
        state = killed / "checkpoint.json"
        if state.is_file() and json.loads(state.read_text())["completed"] == 1:
            break
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # now inside task 2's training
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert json.loads((killed / "checkpoint.json").read_text())["completed"] == 1

    resumed = subprocess.run([sys.executable, "-m", "continual", "resume", str(killed), "progress=false"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    print(f"kill-and-resume test wall time: {time.perf_counter() - started:.1f}s")

    R_whole = json.loads((whole / "results.json").read_text())["R"]
    R_resumed = json.loads((killed / "results.json").read_text())["R"]
    assert R_resumed == R_whole

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("continual").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # resumed in the same MLflow run
    whole_id = json.loads((whole / "checkpoint.json").read_text())["run_id"]
    killed_id = json.loads((killed / "checkpoint.json").read_text())["run_id"]
    assert {whole_id, killed_id} == {r.info.run_id for r in runs}
    h_whole, h_killed = _histories(client, whole_id), _histories(client, killed_id)
    assert h_killed == h_whole
    for j, name in enumerate(TASKS):
        assert [s for s, _ in h_killed[f"acc/{name}"]] == list(range(j, 3))  # one value per step, none missing


def test_resume_refuses_a_changed_config_and_a_plain_rerun_refuses_an_existing_run(tmp_path, tiny_model_dir,
                                                                                demo_files_3):
    conf = _conf(tmp_path, demo_files_3)
    run_dir = tmp_path / "run"
    args = _args(tmp_path, conf, tiny_model_dir, run_dir)
    args[args.index("trainer.epochs=40")] = "trainer.epochs=1"
    assert subprocess.run(args, capture_output=True, cwd=tmp_path).returncode == 0
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    changed = subprocess.run(args + ["resume=true", "trainer.lr=0.5"], capture_output=True, text=True, cwd=tmp_path)
    assert changed.returncode == 2 and "config differs" in changed.stderr and "trainer.lr" in changed.stderr
    assert subprocess.run(args + ["resume=true"], capture_output=True, cwd=tmp_path).returncode == 0  # already complete


def test_same_seed_same_matrix_on_cpu(tiny_backbone, tmp_path):
    def once(out):
        learner = AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=8),
                                 TrainerConfig(epochs=2, batch_size=16, lr=2e-2), seed=7, progress=False)
        return run_stream(DemoStream(max_per_class=12).load(), learner, OracleRouter(), MemoryTracker(), out,
                          progress=False).R

    a, b = once(tmp_path / "a"), once(tmp_path / "b")
    np.testing.assert_array_equal(a, b)


def test_adapters_refuse_a_different_backbone(tiny_backbone, tmp_path):
    from continual.errors import ContinualError

    stream = DemoStream(max_per_class=8).load()
    learner = AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=8), TrainerConfig(epochs=1), progress=False)
    learner.learn(stream.tasks[0])
    learner.save(tmp_path)
    other = AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=16), TrainerConfig(epochs=1), progress=False)
    with pytest.raises(ContinualError, match="saved for adapter="):
        other.load(tmp_path, stream.tasks[:1])
    tiny_backbone.name = "another-model"
    with pytest.raises(ContinualError, match="saved for backbone="):
        AdapterPerTask(tiny_backbone, BottleneckConfig(bottleneck_dim=8), TrainerConfig(epochs=1),
                       progress=False).load(tmp_path, stream.tasks[:1])
