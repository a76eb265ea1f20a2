"""``continual extend``: learn more tasks after a finished run, into a new folder and a new tracking run.

The extension starts where the run ended: its adapters, heads and router state are copied and
loaded, not retrained (they stay bit-identical, and the first run's folder is never written), its
accuracy matrices are the first ``T`` rows of the extension's, and learning goes on from step ``T``
with the new stream's tasks. The extension's config is the run's own with the stream replaced by
the run's stream followed by the new one (each part keeping the folder its paths resolve against),
so ``continual resume`` works on an extension as on any run.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from continual import files
from continual.commands.cmdline import RUN_MARKER, check_output_folder, check_outside_runs
from continual.commands.train import Job, train
from continual.errors import ContinualError
from continual.files import RunLock
from continual.logs import log_to, quiet_libraries
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.run import assemble
from continual.run.assemble import CONCATENATED
from continual.run.checkpoint import CONFIG, ORIGIN, Origin, RunState, read_config, set_key
from continual.run.experiment import RunResult

# what an extension may change: how the new tasks train, where they are tracked, how the job runs
CHANGEABLE = ("trainer.", "tracking.", "progress", "threads", "run_name", "seed")


def _source_state(source: Path) -> tuple[dict[str, Any], RunState, Origin]:
    """The finished run's config, state and origin, its files checked (one line if it is not a finished run)."""
    for name in (CONFIG, ORIGIN, "checkpoint.json"):
        if not (source / name).is_file():
            raise ContinualError(f"continual extend: {source} is not a run that can be extended (no {name})")
    state = RunState.load(source)
    assert state is not None
    if not state.finished:
        raise ContinualError(
            f"continual extend: the run in {source} is not finished ({state.completed} of "
            f"{len(state.task_names)} tasks; it stopped, failed or still runs): `continual resume {source}` first"
        )
    if not (source / ROUTER_FILE).is_file():
        raise ContinualError(f"continual extend: {source} is not a run that can be extended (no {ROUTER_FILE})")
    files.verify(source, state.files)  # a damaged file stops here, before anything is made
    return read_config(source), state, Origin.load(source)


def check_extension_folder(out_dir: Path) -> None:
    """An extension makes a new run folder: in no run's folder, and empty if it exists (or a run it may resume)."""
    check_outside_runs(out_dir.parent, "--output")
    holds = out_dir.is_dir() and any(p.name != RunLock.FILENAME for p in out_dir.iterdir())
    if holds and not (out_dir / RUN_MARKER).is_file():
        raise ContinualError(f"--output {out_dir} is a folder that holds files; give a new or an empty folder")
    check_output_folder(out_dir, "--output")


def extension_config(
    old: Mapping[str, Any], origin: Origin, stream: Mapping[str, Any], launch_dir: Path, overrides: list[str]
) -> dict[str, Any]:
    """The run's config with the stream replaced by (the run's stream, then ``stream``) and ``overrides`` applied."""
    config = yaml.safe_load(yaml.safe_dump(dict(old)))  # a deep copy of plain values
    name = f"{old['stream'].get('name', 'stream')}+{stream.get('name', 'more')}"
    config["stream"] = {
        "_target_": CONCATENATED,
        "name": name,
        "parts": [
            {"source": old["stream"], "launch_dir": origin.launch_dir},
            {"source": dict(stream), "launch_dir": str(launch_dir.absolute())},
        ],
    }
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.startswith(CHANGEABLE):
            raise ContinualError(
                f"continual extend: {override!r}: an extension keeps the run's learner, adapter, "
                "backbone and router; it may change trainer.*, tracking.*, seed, progress, threads"
            )
        set_key(config, key, value, "continual extend")
    config["resume"] = True  # the extension's folder holds a state to continue from
    return config


def _extended_state(old: RunState, names: list[str]) -> RunState:
    """The extension's state: the run's tasks done, its matrices as the first rows, a tracking run to come."""
    state = RunState(names, completed=old.completed, global_step=old.global_step, reports=list(old.reports))
    state.files = dict(old.files)  # the run's files, copied as they are
    T = len(old.task_names)
    for matrix, rows in ((state.R, old.R), (state.oracle_R, old.oracle_R), (state.router_R, old.router_R)):
        matrix[:T, :T] = rows
    return state


def prepare(source: Path, out_dir: Path, config: dict[str, Any], stream_names: list[str], origin: Origin) -> None:
    """Copy the run's learner and router files into the (new) extension folder and write its config and state."""
    _, old, _ = _source_state(source)
    if stream_names[: len(old.task_names)] != old.task_names:
        raise ContinualError(
            f"continual extend: the run's stream now gives tasks {stream_names[: len(old.task_names)]}"
            f", not the {old.task_names} it learned"
        )
    if (out_dir / "checkpoint.json").is_file():
        raise ContinualError(f"{out_dir} already holds a run; choose another --output")
    (out_dir / "adapters").mkdir(parents=True, exist_ok=True)
    for path in sorted((source / "adapters").glob("*.safetensors")):
        shutil.copy2(path, out_dir / "adapters" / path.name)
    shutil.copy2(source / ROUTER_FILE, out_dir / ROUTER_FILE)
    files.write_text(out_dir / CONFIG, yaml.safe_dump(config, sort_keys=False))
    origin.save(out_dir)
    _extended_state(old, stream_names).save(out_dir)


def extend_job(
    source: Path,
    stream: Mapping[str, Any],
    overrides: list[str],
    out_dir: Path,
    launch_dir: Path,
    ref: str | None = None,
) -> RunResult:
    """Learn ``stream``'s tasks after the finished run in ``source`` (a folder, or a version's bank fetched
    from ``ref``), into ``out_dir`` and a new tracking run tagged with the run it extends."""
    old_config, old_state, old_origin = _source_state(source)
    if out_dir.resolve().is_relative_to(source.resolve()):
        raise ContinualError(f"--output {out_dir} lies in the run it extends ({source}), which stays untouched")
    config = extension_config(old_config, old_origin, stream, launch_dir, overrides)
    quiet_libraries()
    assemble.parts(config)  # every option checked before anything is written
    names = [t.name for t in assemble.stream_source(config["stream"]).load(launch_dir).tasks]  # collisions: one line
    origin = Origin(str(launch_dir.absolute()), dict(old_origin.choices), None, "extend.log")
    tags = {"extends": str(old_state.run_id), "extends_source": ref or str(source)}
    with log_to(out_dir / "extend.log"):
        job = Job(
            out_dir,
            launch_dir,
            origin.choices,
            log_file=out_dir / "extend.log",
            tags=tags,
            prepare=lambda: prepare(source, out_dir, config, names, origin),
        )
        return train(config, job)
