"""``continual extend``: more tasks after a finished run, the run itself untouched and not retrained."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from continual.errors import ContinualError
from continual.files import RunLock

from conftest import demo_task_files, histories, main_in_process, mlflow_runs, stream_yaml, tiny_overrides


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def first(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A finished run on (banking, travel) in ``tmp_path/first``; streams ``more`` (cooking, fitness) and
    ``again`` (travel) in ``tmp_path/conf``."""
    conf = stream_yaml(tmp_path / "conf", demo_task_files(tmp_path, ("banking", "travel")), max_per_class=8)
    stream_yaml(conf, demo_task_files(tmp_path, ("cooking", "fitness")), name="more", max_per_class=8)
    stream_yaml(conf, demo_task_files(tmp_path, ("travel",)), name="again", max_per_class=8)
    proc = main_in_process(
        monkeypatch,
        capsys,
        "--config-dir",
        conf,
        "stream=two_tasks",
        *tiny_overrides(tmp_path, tiny_model_dir, "router=prototype"),
        f"hydra.run.dir={tmp_path / 'first'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path / "first"


def _extend(monkeypatch, capsys, first: Path, out: Path, *extra: str, stream: str = "more"):
    conf = first.parent / "conf"
    return main_in_process(
        monkeypatch, capsys, "extend", first, f"stream={stream}", "--config-dir", conf, "--output", out, *extra
    )


def test_extend_learns_after_the_run_which_stays_untouched_and_not_retrained(first, tmp_path, monkeypatch, capsys):
    before = _digests(first)
    proc = _extend(monkeypatch, capsys, first, tmp_path / "ext")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _digests(first) == before  # the first run's folder is never written

    old, new = (json.loads((d / "results.json").read_text()) for d in (first, tmp_path / "ext"))
    assert new["task_names"] == ["banking", "travel", "cooking", "fitness"]
    for key in ("R", "oracle_R"):
        assert np.array_equal(np.array(new[key])[:2, :2], np.array(old[key]))  # the first rows are the run's
        assert np.isfinite(np.array(new[key], dtype=float)[3]).all()
    ext = tmp_path / "ext" / "adapters"
    for path in sorted((first / "adapters").iterdir()):  # loaded, not retrained: the same bytes
        assert (ext / path.name).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in ext.iterdir())[2:] == ["02_cooking.safetensors", "03_fitness.safetensors"]

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = {r.info.run_id: r for r in mlflow_runs(uri)}
    (extension,) = [r for r in runs.values() if "extends" in r.data.tags]
    assert extension.data.tags["extends"] in runs and extension.info.status == "FINISHED"
    acc = histories(uri, extension.info.run_id)["avg_acc"]
    assert [step for step, _ in acc] == [2, 3]  # the metrics continue from step T
    assert acc[-1][1] == pytest.approx(new["avg_acc"])


def test_a_task_name_the_run_already_learned_is_one_line(first, tmp_path, monkeypatch, capsys):
    proc = _extend(monkeypatch, capsys, first, tmp_path / "x", stream="again")
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "travel" in line and "the tasks of the run and of the extension" in line
    assert not (tmp_path / "x").exists()


def test_extend_refuses_learner_changes_a_running_folder_and_an_unfinished_run(first, tmp_path, monkeypatch, capsys):
    proc = _extend(monkeypatch, capsys, first, tmp_path / "x", "adapter.bottleneck_dim=8")
    assert proc.returncode == 2 and "keeps the run's learner" in proc.stderr
    proc = _extend(monkeypatch, capsys, first, first / "inside")
    assert proc.returncode == 2 and "lies in the run folder" in proc.stderr and not (first / "inside").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    proc = _extend(monkeypatch, capsys, first, tmp_path / "busy")
    assert proc.returncode == 2 and "is a folder that holds files; give a new or an empty folder" in proc.stderr
    with RunLock(tmp_path / "held"):
        proc = _extend(monkeypatch, capsys, first, tmp_path / "held")
    assert proc.returncode == 2 and "in use by another continual process" in proc.stderr, proc.stderr
    state = json.loads((first / "checkpoint.json").read_text())
    state["completed"], state["finished"] = 1, False
    (first / "checkpoint.json").write_text(json.dumps(state))
    proc = _extend(monkeypatch, capsys, first, tmp_path / "y")
    assert proc.returncode == 2 and "not finished (1 of 2 tasks; it stopped, failed or still runs)" in proc.stderr


def test_an_extension_that_fails_resumes_into_its_own_tracking_run(first, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if "03_" in Path(filename).name:
            raise OSError(28, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    proc = _extend(monkeypatch, capsys, first, tmp_path / "ext")
    assert proc.returncode != 0
    assert json.loads((tmp_path / "ext" / "checkpoint.json").read_text())["completed"] == 3
    monkeypatch.setattr(safetensors.torch, "save_file", real)

    proc = main_in_process(monkeypatch, capsys, "resume", tmp_path / "ext")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert json.loads((tmp_path / "ext" / "results.json").read_text())["task_names"][-1] == "fitness"


def test_extension_config_names_what_may_change():
    from continual.commands.extend import extension_config
    from continual.run.checkpoint import Origin

    old = {"stream": {"name": "a"}, "trainer": {"lr": 1.0}, "seed": 0}
    config = extension_config(old, Origin("/x", {}, None, None), {"name": "b"}, Path("/y"), ["trainer.lr=0.5"])
    assert config["trainer"]["lr"] == 0.5 and config["stream"]["name"] == "a+b" and old["trainer"]["lr"] == 1.0
    assert [p["launch_dir"] for p in config["stream"]["parts"]] == ["/x", "/y"]
    with pytest.raises(ContinualError, match="keeps the run's learner"):
        extension_config(old, Origin("/x", {}, None, None), {"name": "b"}, Path("/y"), ["router=oracle"])
    with pytest.raises(ContinualError, match=r"seed.x=1: seed is a value \(0\), not a group of keys"):
        extension_config(old, Origin("/x", {}, None, None), {"name": "b"}, Path("/y"), ["seed.x=1"])
