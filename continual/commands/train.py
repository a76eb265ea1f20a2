"""One job of the ``continual`` command, top to bottom: from a resolved config to a finished tracking run.

The order is what makes failures cheap and visible: every option is validated (no data, no model),
the folder is locked and the tracking run opened, the data is read and checked against the learner
and router, and only then is the backbone loaded and the stream learned. Whatever goes wrong after
the tracking run exists marks it FAILED (KILLED on an interrupt), with the rows finished so far and
the job's log attached. Without Hydra::

    train(config, Job(out_dir=Path("runs/mine"), launch_dir=Path.cwd()))
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from continual import files
from continual.errors import ContinualError, sigterm_as_interrupt
from continual.files import RunLock
from continual.logs import log_to, quiet_libraries
from continual.run import assemble, compat
from continual.run.checkpoint import CONFIG, Origin, RunState, resume_config, resume_state
from continual.run.experiment import RunOptions, RunResult, run_stream
from continual.run.sinks import Sink, default_sinks, summary_text
from continual.serving.registry import PublishSink
from continual.streams import Stream
from continual.tracking.base import Tracker, data_inputs
from continual.tracking.sweep import child_tags, close_sweep

log = logging.getLogger("continual")

TAGGED_CHOICES = ("stream", "learner", "router", "adapter", "backbone", "method")  # config groups that become run tags
DESCRIBED_TASKS = 20  # a stream of 1,000 tasks is described by its first ones and a count, not in one huge line


_started: list[Path] = []  # the folder of the last job this process started: what an interrupt's message names


def last_folder() -> Path | None:
    """The folder of the last job this process started (None: none yet)."""
    return _started[-1] if _started else None


@dataclass(frozen=True)
class Job:
    """Where and how a job runs, besides its config."""

    out_dir: Path
    launch_dir: Path  # relative data and store paths resolve against it
    choices: Mapping[str, str] = field(default_factory=dict)  # the option chosen in each config group: run tags
    index: int | None = None  # its place in a multirun: its tracking run joins the sweep's parent run
    log_file: Path | None = None  # attached to the tracking run when the job ends
    tags: Mapping[str, str] = field(default_factory=dict)  # more tags for a new tracking run (an extension's)
    prepare: Callable[[], None] | None = None  # runs first, under the folder's lock (an extension's start)
    new_run: bool = False  # resume into a new tracking run (a copied or moved folder), not the one it names

    @property
    def label(self) -> str:
        """What prefixes progress bars and log lines: the job's index in a multirun."""
        return "" if self.index is None else f"job {self.index} "


def train(config: Mapping[str, Any], job: Job) -> RunResult:
    """Validate, lock the folder, open the tracking run, then learn the stream; print and return the result."""
    quiet_libraries()
    _started[:] = [job.out_dir]
    parts = assemble.parts(config)  # every option checked: no data read, no model loaded yet
    with RunLock(job.out_dir), sigterm_as_interrupt(), assemble.threads(config.get("threads")):
        if job.prepare is not None:
            job.prepare()
        state = resume_state(job.out_dir, dict(config), bool(config.get("resume")))
        if state is not None:  # the learned tasks' files as the run wrote them, before the tracking run is touched
            files.verify(job.out_dir, state.files, within="adapters/")
        if state is not None and state.run_id is not None and job.new_run:
            job = dataclasses.replace(job, tags={**job.tags, "continued_from": state.run_id})
            state.run_id = None
        resumed = state is not None and state.run_id is not None  # into its tracking run (not an extension's start)
        if state is None:
            log_name = job.log_file.name if job.log_file else None
            Origin(str(job.launch_dir), dict(job.choices), job.index, log_name).save(job.out_dir)
        tracker = _tracker(config, parts, job, state)
        result, text = _tracked(tracker, job, lambda: _learn(config, parts, tracker, state, job))
        if resumed:
            close_sweep(job.out_dir.parent, only_if_done=True)  # a resumed job of a multirun may be its last to end
    print(text, flush=True)
    return result


def _learn(
    config: Mapping[str, Any], parts: assemble.Parts, tracker: Tracker, state: RunState | None, job: Job
) -> RunResult:
    """Inside the open tracking run: config and params, data (and its lineage), compatibility, model, the stream."""
    new_run = state is None or state.run_id is None  # a new tracking run (an extension's state has none yet)
    if new_run:
        tracker.log_params(config)
        files.write_text(job.out_dir / CONFIG, yaml.safe_dump(dict(config), sort_keys=False))
        tracker.log_artifact(job.out_dir / CONFIG)
    stream = parts.source.load(job.launch_dir)
    log.info("stream %s: %s", stream.name, _describe(stream))
    if new_run:
        tracker.log_inputs(data_inputs(stream))
    compat.check(stream, parts.router, parts.learner.head, f"learner={job.choices.get('learner', '')}")
    if state is None:  # written before any training so that even task 0 can be resumed into this run
        state = RunState(stream.task_names)
    if state.run_id is None:
        state.run_id = tracker.run_id
        state.save(job.out_dir)
    assemble.seed_everything(config["seed"])
    learner = assemble.learner(parts, assemble.backbone(config), config["seed"])
    sinks: list[Sink] = default_sinks(tracker, job.out_dir, learner, parts.router, stream.tasks)
    if parts.register is not None:  # last: the bank it registers is the finished run's
        sinks.append(
            PublishSink(parts.register, tracker, job.out_dir, dict(config), learner, parts.router, stream.tasks)
        )
    options = RunOptions(job.out_dir, config["progress"], label=job.label, schedule=parts.evaluation, sinks=sinks)
    return run_stream(stream, learner, parts.router, tracker, options, state)


def _tracker(config: Mapping[str, Any], parts: assemble.Parts, job: Job, state: RunState | None) -> Tracker:
    """The job's tracking run: the saved one when resuming, else a new one named and tagged after its choices."""
    tags = {k: str(job.choices.get(k, "")) for k in TAGGED_CHOICES}
    if compat.routes_itself(parts.learner.head):
        tags["router"] = "head"
    tags.update(seed=str(config["seed"]), order=str(config["stream"].get("order")))
    tags.update({**(child_tags(job.out_dir, job.index) if job.index is not None else {}), **job.tags})
    name = config.get("run_name") or f"{parts.source.name}-{tags['learner']}-{tags['router']}-seed{config['seed']}"
    run_id = state.run_id if state else None
    return assemble.tracker(config["tracking"], job.launch_dir, name, tags, run_id, folder=job.out_dir)


def _describe(stream: Stream) -> str:
    described = ", ".join(
        f"{t.name} ({len(t.labels)} {t.kind.label_noun}, {len(t.train)}/{len(t.validation)}/{len(t.test)})"
        for t in stream.tasks[:DESCRIBED_TASKS]
    )
    more = len(stream.tasks) - DESCRIBED_TASKS
    return described + (f", ... and {more} more tasks" if more > 0 else "")


def _tracked(tracker: Tracker, job: Job, learn: Callable[[], RunResult]) -> tuple[RunResult, str]:
    """``learn()`` inside the tracking run: FINISHED with the summary and log attached, else FAILED/KILLED."""
    try:
        result = learn()
        text = summary_text(result, tracker, job.out_dir)
        (job.out_dir / "summary.txt").write_text(text + "\n")
        tracker.log_artifact(job.out_dir / "summary.txt")
        _attach_log(tracker, job.log_file)
        tracker.finish("FINISHED")
        result.state.finished = True
        result.state.save(job.out_dir)
        return result, text
    except BaseException as exc:
        partial = job.out_dir / "accuracy_matrix.csv"
        if partial.is_file():  # the rows finished so far stay visible next to the failed run
            tracker.log_artifact(partial)
        if isinstance(exc, ContinualError):
            log.error("%s", exc)  # into the job's log file, which is attached next
        _attach_log(tracker, job.log_file)
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def _attach_log(tracker: Tracker, log_file: Path | None) -> None:
    if log_file is not None and log_file.is_file():
        for handler in logging.getLogger().handlers:
            handler.flush()
        tracker.log_artifact(log_file)


def resume(run_dir: Path, overrides: list[str], new_run: bool = False) -> RunResult:
    """``continual resume RUN_DIR``: the run's saved config, launch folder and choices, into the same folder
    and tracking run (``new_run``: a new one, for a copied or moved folder), from its first unfinished task.
    No config is composed again, so the run continues exactly as it was made (``overrides`` may only change
    how it runs: progress, threads, device)."""
    run_dir = run_dir.resolve()
    origin = Origin.load(run_dir)
    config = resume_config(run_dir, overrides)
    log_file = run_dir / origin.log_file if origin.log_file else None
    job = Job(run_dir, Path(origin.launch_dir), origin.choices, origin.job, log_file, new_run=new_run)
    with log_to(log_file):
        return train(config, job)
