"""One job of the ``continual`` command: from a resolved config to a finished (or failed) tracking run.

The order is what makes failures cheap and visible: every option is validated (no data, no model),
the tracking run is opened, the data is read and checked against the learner and router, and only
then is the backbone loaded and training started. Whatever goes wrong after the tracking run exists
marks it FAILED (KILLED on an interrupt), with the rows finished so far and the job's log attached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from continual import assemble, files, registry
from continual.checkpoint import CONFIG, Origin, RunState, resume_config, resume_state
from continual.errors import ContinualError, sigterm_as_interrupt
from continual.experiment import RunResult, check_compatible, run_stream
from continual.files import RunLock
from continual.routers import Reads, Router
from continual.sinks import summary_text
from continual.streams import Stream
from continual.streams.task import TOKENS
from continual.tracking.base import Tracker, data_inputs
from continual.tracking.mlflow import child_tags, close_sweep

log = logging.getLogger("continual")

TAGGED_CHOICES = ("stream", "learner", "router", "adapter", "backbone", "method")  # config groups that become run tags


def quiet_libraries() -> None:
    """No progress bars or info lines from datasets/transformers/MLflow: ours say what is going on."""
    import os

    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_tags(config: Mapping[str, Any], choices: Mapping[str, str], router: Router) -> dict[str, str]:
    """The run's tags: the chosen option of each config group (the router actually used), the seed, the order."""
    tags = {k: str(choices.get(k, "")) for k in TAGGED_CHOICES}
    if router.reads is Reads.ONE_HEAD:
        tags["router"] = "head"
    tags.update(seed=str(config["seed"]), order=str(config["stream"].get("order")))
    return tags


DESCRIBED_TASKS = 20  # a stream of 1,000 tasks is described by its first ones and a count, not in one huge line


def _describe(stream: Stream) -> str:
    described = ", ".join(
        f"{t.name} ({len(t.labels)} {'entity types' if t.kind == TOKENS else 'labels'}, "
        f"{len(t.train)}/{len(t.validation)}/{len(t.test)})"
        for t in stream.tasks[:DESCRIBED_TASKS]
    )
    more = len(stream.tasks) - DESCRIBED_TASKS
    return described + (f", ... and {more} more tasks" if more > 0 else "")


def _attach_log(tracker: Tracker, log_file: Path | None) -> None:
    if log_file is not None and log_file.is_file():
        for handler in logging.getLogger().handlers:
            handler.flush()
        tracker.log_artifact(log_file)


def _train(
    config: Mapping[str, Any],
    parts: assemble.Parts,
    tracker: Tracker,
    state: RunState | None,
    out_dir: Path,
    launch_dir: Path,
    learner_name: str,
    label: str,
) -> RunResult:
    """Inside the open tracking run: config and params, data (and its lineage), compatibility, model, the stream."""
    new_run = state is None or state.run_id is None  # a new tracking run (an extension's state has none yet)
    if new_run:
        tracker.log_params(config)
        files.write_text(out_dir / CONFIG, yaml.safe_dump(dict(config), sort_keys=False))
        tracker.log_artifact(out_dir / CONFIG)
    stream = parts.source.load(launch_dir)
    log.info("stream %s: %s", stream.name, _describe(stream))
    if new_run:
        tracker.log_inputs(data_inputs(stream))
    check_compatible(stream, parts.router, parts.learner.head, f"learner={learner_name}")
    if state is None:  # written before any training so that even task 0 can be resumed into this run
        state = RunState(stream.task_names)
    if state.run_id is None:
        state.run_id = tracker.run_id
        state.save(out_dir)
    assemble.seed_everything(config["seed"])
    backbone = assemble.backbone(config)
    learner = assemble.learner(parts, backbone, config["seed"])
    result = run_stream(
        stream,
        learner,
        parts.router,
        tracker,
        out_dir,
        progress=config["progress"],
        state=state,
        label=label,
        schedule=parts.evaluation,
    )
    registry.publish(tracker, out_dir, dict(config), learner, parts.router, stream.tasks)
    return result


def run_job(
    config: Mapping[str, Any],
    out_dir: Path,
    launch_dir: Path,
    choices: Mapping[str, str],
    job: int | None = None,
    log_file: Path | None = None,
    extra_tags: Mapping[str, str] | None = None,
    prepare: Callable[[], None] | None = None,
) -> RunResult:
    """Validate, lock the folder, open the tracker, load data, then train; a failure marks the run FAILED or KILLED.

    ``job`` is the index of this run in a multirun (its run then joins the sweep's parent run);
    ``log_file``, if it exists at the end, is attached to the tracking run; ``extra_tags`` go on a new
    tracking run; ``prepare`` runs first, under the lock (an extension writes its starting state). One
    process at a time writes a run folder (:class:`continual.files.RunLock`); SIGTERM ends the job as
    Ctrl-C does.
    """
    quiet_libraries()
    parts = assemble.parts(config)
    with RunLock(out_dir), sigterm_as_interrupt(), assemble.threads(config.get("threads")):
        if prepare is not None:
            prepare()
        state = resume_state(out_dir, dict(config), bool(config.get("resume")))
        resumed = state is not None and state.run_id is not None  # into its tracking run (not an extension's start)
        if state is None:
            Origin(str(launch_dir), dict(choices), job, log_file.name if log_file else None).save(out_dir)
        tags = {
            **run_tags(config, choices, parts.router),
            **(child_tags(out_dir, job) if job is not None else {}),
            **(extra_tags or {}),
        }
        name = config.get("run_name") or f"{parts.source.name}-{tags['learner']}-{tags['router']}-seed{config['seed']}"
        tracker = assemble.tracker(config["tracking"], launch_dir, name, tags, state.run_id if state else None)
        label = "" if job is None else f"job {job} "
        result, text = _tracked(
            tracker,
            log_file,
            out_dir,
            lambda: _train(config, parts, tracker, state, out_dir, launch_dir, tags["learner"], label),
        )
        if resumed:
            close_sweep(out_dir.parent, only_if_done=True)  # a resumed job of a multirun may be its last to finish
    print(text, flush=True)
    return result


def _tracked(
    tracker: Tracker, log_file: Path | None, out_dir: Path, train: Callable[[], RunResult]
) -> tuple[RunResult, str]:
    """``train()`` inside the tracking run: FINISHED with the summary and log attached, else FAILED/KILLED."""
    try:
        result = train()
        text = summary_text(result, tracker.uri, tracker.run_id, out_dir)
        (out_dir / "summary.txt").write_text(text + "\n")
        tracker.log_artifact(out_dir / "summary.txt")
        _attach_log(tracker, log_file)
        tracker.finish("FINISHED")
        result.state.finished = True
        result.state.save(out_dir)
        return result, text
    except BaseException as exc:
        partial = out_dir / "accuracy_matrix.csv"
        if partial.is_file():  # the rows finished so far stay visible next to the failed run
            tracker.log_artifact(partial)
        if isinstance(exc, ContinualError):
            log.error("%s", exc)  # into the job's log file, which is attached next
        _attach_log(tracker, log_file)
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def resume_job(run_dir: Path, overrides: list[str]) -> RunResult:
    """``continual resume RUN_DIR``: the run's saved config, launch folder and choices, into the same folder
    and tracking run, from its first unfinished task. No config is composed again, so the run continues
    exactly as it was made (``overrides`` may only change how it runs: progress, threads, device)."""
    run_dir = run_dir.resolve()
    origin = Origin.load(run_dir)
    config = resume_config(run_dir, overrides)
    log_file = run_dir / origin.log_file if origin.log_file else None
    with log_to(log_file):
        return run_job(config, run_dir, Path(origin.launch_dir), origin.choices, origin.job, log_file)


@contextmanager
def log_to(path: Path | None) -> Iterator[None]:
    """Log lines also go to ``path`` (appended) while the block runs, as Hydra's set-up does for a first start."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
