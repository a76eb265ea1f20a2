"""Every file a reload needs carries the sha256 it was written with: a flipped bit is one line, never an answer."""

import json
import struct

import pytest

from conftest import copy_run, main_in_process, one_error_line


def _flip_a_weight_bit(path):
    """One bit of the last tensor value's exponent, in the data after the safetensors header."""
    data = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(data) > header
    data[-1] ^= 0b0100_0000
    path.write_bytes(bytes(data))


def test_the_checkpoint_records_every_file_a_reload_needs(finished_run):
    recorded = json.loads((finished_run / "checkpoint.json").read_text())["files"]
    on_disk = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*.safetensors")}
    assert set(recorded) == on_disk and all(len(sha) == 64 for sha in recorded.values())


@pytest.mark.parametrize("damaged", ["adapters/01_travel.safetensors", "router.safetensors"])
def test_a_damaged_file_is_one_line_for_predict_extend_and_resume(finished_run, tmp_path, monkeypatch, capsys, damaged):
    run = copy_run(finished_run, tmp_path / "run")
    _flip_a_weight_bit(run / damaged)
    line = one_error_line(main_in_process(monkeypatch, capsys, "predict", run, "--text", "book a flight"))
    assert f"{run / damaged}: damaged: its sha256 is" in line
    extend = main_in_process(
        monkeypatch, capsys, "extend", run, "stream=demo", "stream.max_per_class=2", "--output", tmp_path / "more"
    )
    assert f"{run / damaged}: damaged" in one_error_line(extend) and not (tmp_path / "more").exists()
    if damaged.startswith("adapters/"):  # a resumed run would take the damaged adapter as learned
        state = json.loads((run / "checkpoint.json").read_text())
        state["finished"] = False
        (run / "checkpoint.json").write_text(json.dumps(state))
        line = one_error_line(main_in_process(monkeypatch, capsys, "resume", run, "progress=false"))
        assert f"{run / damaged}: damaged" in line


@pytest.mark.parametrize("target", ["checkpoint.json", "results.json", "adapters/00_banking.safetensors", "new.jsonl"])
def test_predict_writes_nowhere_inside_a_run_folder(finished_run, tmp_path, monkeypatch, capsys, target):
    run = copy_run(finished_run, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = main_in_process(monkeypatch, capsys, "predict", run, "--text", "hello", "--output", run / target)
    assert f"lies in the run folder {run}, which only its run writes" in one_error_line(proc)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
