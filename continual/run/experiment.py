"""One continual-learning run as a short loop: each step learns, routes, evaluates and hands a record to sinks.

Usable without Hydra::

    stream = DemoStream().load()
    backbone = Backbone.load()
    learner = AdapterPerTask(backbone, BottleneckConfig(), TrainerConfig())
    result = run_stream(stream, learner, PrototypeRouter(), MemoryTracker(), RunOptions(Path("out")))

A step (:class:`continual.learners.Step`) learns the tasks the learner's schedule gives it, folds
them into the router, evaluates every task seen so far through the router (and with the true task
given), saves the learner's and router's state, and produces a :class:`StepRecord`. Sinks
(:mod:`continual.run.sinks`) consume records: the tracker, the files in the output folder, the
checkpoint. A new metric is one line in :func:`metric_row`; a new output is a sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from continual import files, metrics
from continual.errors import ContinualError
from continual.learners.base import Learner, LearnReport, Step, steps
from continual.routers.base import Router
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.routers.state import load_router, save_router
from continual.run.checkpoint import RunState
from continual.run.evaluation import Evaluator, TaskEval, split_inputs
from continual.run.schedule import EvalConfig
from continual.run.sinks import TASKS_LEARNED, Sink, default_sinks
from continual.streams import Stream
from continual.tracking.base import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    """What one step produced; sinks see nothing else (besides the run state it was folded into)."""

    step: Step  # the tasks learned and the row of R filled
    report: LearnReport
    evals: dict[int, TaskEval]  # the tasks evaluated at this step (all of 0..row by default), by stream index
    losses: list[tuple[int, float]]  # (global optimizer step, training loss)
    row: dict[str, float]  # the metrics logged at step ``step.row``

    def describe(self, num_tasks: int) -> str:
        """One log line: where the stream is, the average accuracy so far, what learning the step cost."""
        row, report = self.row, self.report
        scores = f"avg_acc={row['avg_acc']:.4f} router_acc={row['router_acc']:.4f} " if self.evals else ""
        kept = "" if report.kept_epoch is None else f" (weights of epoch {report.kept_epoch}: best on validation)"
        return (
            f"after task {self.step.row + 1}/{num_tasks} {report.task}: {scores}val_acc={report.val_acc:.4f}{kept} "
            f"{report.seconds:.1f}s ({report.samples_per_second:.0f} samples/s)"
        )


@dataclass
class RunResult:
    """The run's state after its last step, the final routing counts and the last metric row."""

    state: RunState
    confusion: np.ndarray  # true task x (routed task..., rejected), on the test sets after the last step
    last_row: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    f1_tasks: list[str] = field(default_factory=list)  # token tasks: their entries in R are entity F1

    @property
    def metrics(self) -> dict[str, float]:
        return self.state.metrics()


def metric_row(
    state: RunState, record: StepRecord, names: Sequence[str], metrics_of: Sequence[str], extra: dict[str, float]
) -> dict[str, float]:
    """Everything logged at step ``i`` (the row just filled): the matrices' summaries, per-task values, costs.

    A task's entry in R is its kind's score, logged under the kind's metric (``metrics_of[j]``): accuracy
    (``acc/<task>``) or entity micro F1 for a token task (``f1/<task>``, ``oracle_f1/<task>``); ACC, BWT and
    forgetting summarise R whatever each entry's score is. A step
    that the evaluation schedule skips logs its costs only; per-task values are those of the tasks
    evaluated (all seen tasks by default, see :mod:`continual.run.schedule`)."""
    i, report = record.step.row, record.report
    learned = record.step.tasks
    val_key = metrics_of[learned[0]] if len(learned) == 1 else "acc"  # joint: the mean over its tasks
    row = {
        f"val_{val_key}/{report.task}": report.val_acc,
        "trainable_params": report.trainable_params,
        **({} if report.kept_epoch is None else {f"kept_epoch/{report.task}": report.kept_epoch}),
        **({} if report.probe_l2 is None else {f"probe_l2/{report.task}": report.probe_l2}),
        "train_seconds": report.seconds,
        "train_samples_per_s": report.samples_per_second,
        **extra,
    }
    columns = sorted(record.evals)
    if columns:
        row.update(metrics.summary(metrics.prefix(state.R, i)))  # no task id: class-incremental for every learner
        given = metrics.summary(metrics.prefix(state.oracle_R, i))  # task id given: task-incremental
        row.update({"oracle_bwt": given["bwt"], "oracle_forgetting": given["forgetting"]})
        row.update({f"{metrics_of[j]}/{names[j]}": state.R[i, j] for j in columns})
        row.update({f"router_acc/{names[j]}": state.router_R[i, j] for j in columns})
        row.update({f"oracle_{metrics_of[j]}/{names[j]}": state.oracle_R[i, j] for j in columns})
        row.update(
            {
                "router_acc": float(np.mean(state.router_R[i, columns])),
                "oracle_avg_acc": float(np.mean(state.oracle_R[i, columns])),
            }
        )
    row[TASKS_LEARNED] = float(i + 1)  # logged last: marks the step as logged (see sinks.TrackerSink)
    return row


class _Run:
    """The parts of one run and what persists between its steps."""

    def __init__(
        self, stream: Stream, learner: Learner, router: Router, out_dir: Path, memoise: bool, schedule: EvalConfig
    ) -> None:
        self.stream, self.learner, self.router, self.out_dir = stream, learner, router, out_dir
        self.schedule = schedule
        rejects = router.accept_rate is not None
        self.evaluator = Evaluator(
            learner, router, stream.tasks, memoise=memoise, out_of_scope=stream.out_of_scope if rejects else ()
        )
        self.backbone_params = sum(p.numel() for p in learner.backbone.parameters())
        self.saved_bytes = 0
        self.hashes = files.Hashes()

    def add_to_router(self, indices: range) -> float:
        """Fold tasks ``indices`` into the router; the seconds it took."""
        start = time.perf_counter()
        for j in indices:
            task = self.stream.tasks[j]
            self.router.add_task(
                j, task, split_inputs(self.learner, task.train), split_inputs(self.learner, task.validation)
            )
        return time.perf_counter() - start

    def restore(self, state: RunState) -> None:
        """Resuming (or extending): the learner loads what it saved; the router loads its state when that was
        saved for exactly these tasks, else it is rebuilt from the data, as it was built the first time."""
        done = self.stream.tasks[: state.completed]
        if not done:
            return
        files.verify(self.out_dir, state.files, within="adapters/")
        self.learner.load(self.out_dir / "adapters", done)
        log.info("resuming after task %d/%d (%s)", len(done), len(self.stream.tasks), done[-1].name)
        self.saved_bytes = _bytes(self.out_dir / "adapters")
        try:
            files.verify(self.out_dir, state.files, within=ROUTER_FILE)
            load_router(self.router, self.out_dir, [t.name for t in done], self.learner.backbone.name)
        except ContinualError:  # killed between saving the router and the checkpoint (one task ahead), or damaged
            self.add_to_router(range(len(done)))

    def save(self, names: list[str], state: RunState) -> dict[str, float]:
        """The learner's and router's state after this step, each file's sha256 recorded in ``state`` (for the
        checkpoint); how many bytes a reload needs and this step added."""
        kept = [*self.learner.save(self.out_dir / "adapters")]
        kept.append(save_router(self.router, self.out_dir, names, self.learner.backbone.name))
        state.files = {p.relative_to(self.out_dir).as_posix(): self.hashes.of(p) for p in kept}
        total = sum(p.stat().st_size for p in kept[:-1])
        added, self.saved_bytes = total - self.saved_bytes, total
        return {"artifact_bytes": total, "task_artifact_bytes": added}

    def rejection(self, evals: dict[int, TaskEval]) -> dict[str, float]:
        """With a rejecting router: in-scope inputs rejected, and (given out-of-scope texts) those rejected."""
        if self.router.accept_rate is None or not evals:
            return {}
        row = {"rejected_in_scope": float(np.mean(np.concatenate([e.routes for e in evals.values()]) < 0))}
        if self.evaluator.has_out_of_scope:
            row["oos_recall"] = self.evaluator.rejection_rate()
        return row

    def step(self, step: Step, state: RunState) -> StepRecord:
        """Learn, route, evaluate and save: one row of R and everything logged with it."""
        losses: list[tuple[int, float]] = []
        tasks = [self.stream.tasks[j] for j in step.tasks]
        report = self.learner.learn(tasks, lambda s, loss: losses.append((state.global_step + s, loss)))
        router_seconds = self.add_to_router(step.tasks)
        self.evaluator.new_step()
        eval_start = time.perf_counter()
        evals = {j: self.evaluator.evaluate(j) for j in self.schedule.columns(step.row, len(self.stream.tasks))}
        extra = {
            "trainable_share": report.trainable_params / self.backbone_params,
            "router_seconds": router_seconds,
            **self.rejection(evals),
            "eval_seconds": time.perf_counter() - eval_start,
        }
        state.record(
            step.row,
            len(step.tasks),
            {j: (e.accuracy, e.oracle_accuracy, e.router_accuracy) for j, e in evals.items()},
            report,
        )
        extra.update(self.save(self.stream.task_names[: step.row + 1], state))
        record = StepRecord(step, report, evals, losses, {})
        metrics_of = [t.kind.metric for t in self.stream.tasks]
        record.row.update(metric_row(state, record, self.stream.task_names, metrics_of, extra))
        return record

    def final_routes(self, last: StepRecord | None) -> list[np.ndarray]:
        """Routes of every test set after the last step (routed again when this process ran no step)."""
        T = len(self.stream.tasks)
        if last is not None and len(last.evals) == T:
            return [last.evals[j].routes for j in range(T)]
        self.evaluator.new_step()
        return [self.evaluator.evaluate(j).routes for j in range(T)]


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def confusion(routes: list[np.ndarray], T: int) -> np.ndarray:
    """Counts: row = true task, column = routed task, last column = rejected."""
    counts = np.zeros((T, T + 1), dtype=np.int64)
    for j, r in enumerate(routes):
        counts[j] = np.bincount(np.where(r < 0, T, r), minlength=T + 1)[: T + 1]
    return counts


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, beside what it learns (stream, learner, router) and where it logs (tracker)."""

    out_dir: Path  # the learner's files, the router state, the matrices and the checkpoint go here
    progress: bool = True  # progress bars
    memoise: bool = True  # keep outputs whose fingerprint did not move (False: recompute every step, the plain path)
    label: str = ""  # prefixes progress bars and log lines (a multirun's job index)
    schedule: EvalConfig = field(default_factory=EvalConfig)  # after which steps which tasks are evaluated
    sinks: Sequence[Sink] | None = None  # where step records go; default: the files, the tracker, the checkpoint


def run_stream(
    stream: Stream,
    learner: Learner,
    router: Router,
    tracker: Tracker,
    options: RunOptions,
    state: RunState | None = None,
) -> RunResult:
    """Learn ``stream`` step by step (as ``learner.schedule`` says); evaluate every seen task through ``router``.

    After every step the learner's files, the router state, ``accuracy_matrix.csv`` and
    ``checkpoint.json`` in ``options.out_dir`` are brought up to date. A ``state`` with completed tasks
    resumes after them: the learner loads its files from ``out_dir/adapters``, the router relearns them,
    and their metrics are not logged again. Training losses are logged only once a step is done, so a
    killed step leaves no partial history behind. With a rejecting router (``accept_rate``) and a stream
    with out-of-scope texts, the share of them rejected is logged as ``oos_recall``. Learner, router and
    stream must go together (:func:`continual.run.compat.check`, which the job runs before the model loads).

    A learner whose schedule is ``ALL_AT_END`` (joint training, the upper bound) learns every task at
    the last step: only the final row of R is filled; BWT and forgetting are undefined.
    """
    out_dir, label = options.out_dir, options.label
    out_dir.mkdir(parents=True, exist_ok=True)
    names = stream.task_names
    state = state or RunState(names)
    if state.task_names != names:
        raise ContinualError(f"{out_dir}: the checkpoint is for tasks {state.task_names}, this stream has {names}")
    run = _Run(stream, learner, router, out_dir, options.memoise, options.schedule)
    run.restore(state)
    sinks = (
        list(options.sinks)
        if options.sinks is not None
        else default_sinks(tracker, out_dir, learner, router, stream.tasks)
    )
    start, record = time.perf_counter(), None
    todo = [s for s in steps(learner.schedule, len(names)) if s.row >= state.completed]
    bar = tqdm(todo, desc=f"{label}stream {stream.name}", unit="task", disable=not options.progress)
    for step in bar:
        bar.set_postfix(task=f"{step.row + 1}/{len(names)} {names[step.row]}")
        record = run.step(step, state)
        for sink in sinks:
            sink.on_step(record, state)
        log.info("%s%s", label, record.describe(len(names)))
    routes = run.final_routes(record)
    result = RunResult(
        state,
        confusion(routes, len(names)),
        record.row if record else {},
        time.perf_counter() - start,
        [t.name for t in stream.tasks if t.kind.metric == "f1"],
    )
    totals = {"total_trainable_params": learner.trained_parameters(), "total_train_seconds": state.train_seconds}
    for sink in sinks:
        sink.on_end(result, totals)
    return result
