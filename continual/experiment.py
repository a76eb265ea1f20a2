"""One continual-learning run as a short loop: each step learns, routes, evaluates and hands a record to sinks.

Usable without Hydra::

    stream = DemoStream().load()
    backbone = Backbone.load()
    learner = AdapterPerTask(backbone, BottleneckConfig(), TrainerConfig())
    result = run_stream(stream, learner, PrototypeRouter(), MemoryTracker(), Path("out"))

A step (:class:`continual.learners.Step`) learns the tasks the learner's schedule gives it, folds
them into the router, evaluates every task seen so far through the router (and with the true task
given), saves the learner's and router's state, and produces a :class:`StepRecord`. Sinks
(:mod:`continual.sinks`) consume records: the tracker, the files in the output folder, the
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

from continual import metrics
from continual.checkpoint import RunState
from continual.errors import ContinualError
from continual.evaluation import Evaluator, TaskEval, split_inputs
from continual.learners.base import Head, Learner, LearnReport, Step, steps
from continual.routers.base import Reads, Router
from continual.routers.state import load_router, save_router
from continual.schedule import EvalConfig
from continual.sinks import TASKS_LEARNED, Sink, default_sinks
from continual.streams import Stream
from continual.streams.task import TOKENS
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
        return (
            f"after task {self.step.row + 1}/{num_tasks} {report.task}: {scores}val_acc={report.val_acc:.4f} "
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


def check_compatible(stream: Stream, router: Router, head: Head, learner: str) -> None:
    """Every problem between stream, learner and router that would otherwise surface after training."""
    tasks = stream.tasks
    if not stream.routable and router.reads is not Reads.TASK_IDS:
        raise ContinualError(
            f"stream '{stream.name}': its tasks share their texts (the task id is the client id), so only "
            f"router=oracle can route it, not {type(router).__name__}"
        )
    if head is Head.ALL_SEEN and router.reads is not Reads.ONE_HEAD:
        raise ContinualError(
            f"{learner} has one head over all labels seen so far: it predicts without task ids by "
            f"its own argmax (router=head), not by {type(router).__name__}"
        )
    tagged = [t.name for t in tasks if t.kind == TOKENS]
    if head is Head.ALL_SEEN and tagged:
        raise ContinualError(
            f"{learner} has one head over the labels of sentences; tasks {tagged[:5]} are token tasks (type: "
            "tokens), which learner=adapter_per_task tags with a head per task"
        )
    if head is Head.PER_TASK and router.reads is Reads.ONE_HEAD:
        raise ContinualError(
            f"router=head reads one head over all labels, and {learner} has one head per task: use "
            "router=prototype, classifier, entropy or oracle"
        )
    if router.reads in (Reads.FEATURES, Reads.TASK_HEADS) and len(tasks) < 2:
        raise ContinualError(
            f"router: a learned router needs a stream of at least 2 tasks (this one has "
            f"{len(tasks)}); with one task there is nothing to route, use router=oracle"
        )
    if router.accept_rate is not None:
        empty = [t.name for t in tasks if len(t.validation) == 0]
        if empty:
            raise ContinualError(
                f"router.accept_rate: calibrating rejection needs validation examples, but tasks {empty} have none"
            )


def score_key(kind: str) -> str:
    """What a task's entry in R is, as its metric keys name it: ``acc`` (a label per text) or ``f1`` (entities)."""
    return "f1" if kind == TOKENS else "acc"


def metric_row(
    state: RunState, record: StepRecord, names: Sequence[str], kinds: Sequence[str], extra: dict[str, float]
) -> dict[str, float]:
    """Everything logged at step ``i`` (the row just filled): the matrices' summaries, per-task values, costs.

    A task's entry in R is its accuracy, or its entity micro F1 for a token task (keys ``f1/<task>``,
    ``oracle_f1/<task>``); ACC, BWT and forgetting summarise R whatever each entry's score is. A step
    that the evaluation schedule skips logs its costs only; per-task values are those of the tasks
    evaluated (all seen tasks by default, see :mod:`continual.schedule`)."""
    i, report = record.step.row, record.report
    learned = record.step.tasks
    val_key = score_key(kinds[learned[0]]) if len(learned) == 1 else "acc"  # joint: the mean over its tasks
    row = {
        f"val_{val_key}/{report.task}": report.val_acc,
        "trainable_params": report.trainable_params,
        "train_seconds": report.seconds,
        "train_samples_per_s": report.samples_per_second,
        **extra,
    }
    columns = sorted(record.evals)
    if columns:
        row.update(metrics.summary(metrics.prefix(state.R, i)))  # no task id: class-incremental for every learner
        given = metrics.summary(metrics.prefix(state.oracle_R, i))  # task id given: task-incremental
        row.update({"oracle_bwt": given["bwt"], "oracle_forgetting": given["forgetting"]})
        row.update({f"{score_key(kinds[j])}/{names[j]}": state.R[i, j] for j in columns})
        row.update({f"router_acc/{names[j]}": state.router_R[i, j] for j in columns})
        row.update({f"oracle_{score_key(kinds[j])}/{names[j]}": state.oracle_R[i, j] for j in columns})
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
        self.learner.load(self.out_dir / "adapters", done)
        log.info("resuming after task %d/%d (%s)", len(done), len(self.stream.tasks), done[-1].name)
        self.saved_bytes = _bytes(self.out_dir / "adapters")
        try:
            load_router(self.router, self.out_dir, [t.name for t in done], self.learner.backbone.name)
        except ContinualError:  # killed between saving the router and the checkpoint: one task ahead
            self.add_to_router(range(len(done)))

    def save(self, names: list[str]) -> dict[str, float]:
        """The learner's and router's state after this step; how many bytes a reload needs and this step added."""
        total = sum(p.stat().st_size for p in self.learner.save(self.out_dir / "adapters"))
        save_router(self.router, self.out_dir, names, self.learner.backbone.name)
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
        extra.update(self.save(self.stream.task_names[: step.row + 1]))
        record = StepRecord(step, report, evals, losses, {})
        kinds = [t.kind for t in self.stream.tasks]
        record.row.update(metric_row(state, record, self.stream.task_names, kinds, extra))
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


def run_stream(
    stream: Stream,
    learner: Learner,
    router: Router,
    tracker: Tracker,
    out_dir: Path,
    progress: bool = True,
    memoise: bool = True,
    state: RunState | None = None,
    label: str = "",
    sinks: Sequence[Sink] | None = None,
    schedule: EvalConfig | None = None,
) -> RunResult:
    """Learn ``stream`` step by step (as ``learner.schedule`` says); evaluate every seen task through ``router``.

    After every step the learner's files, the router state, ``accuracy_matrix.csv`` and
    ``checkpoint.json`` in ``out_dir`` are brought up to date. A ``state`` with completed tasks resumes
    after them: the learner loads its files from ``out_dir/adapters``, the router relearns them, and
    their metrics are not logged again. Training losses are logged only once a step is done, so a
    killed step leaves no partial history behind. ``memoise=False`` recomputes every prediction at
    every step (the plain path). With a rejecting router (``accept_rate``) and a stream with
    out-of-scope texts, the share of them rejected is logged as ``oos_recall``. ``label`` prefixes
    progress bars and log lines (a multirun's job index). ``sinks`` default to the files, the
    tracker and the checkpoint. ``schedule`` says after which steps which tasks are evaluated (default:
    all seen tasks after every step; see :mod:`continual.schedule`).

    A learner whose schedule is ``ALL_AT_END`` (joint training, the upper bound) learns every task at
    the last step: only the final row of R is filled; BWT and forgetting are undefined.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = stream.task_names
    check_compatible(stream, router, learner.head, f"learner {type(learner).__name__}")
    state = state or RunState(names)
    if state.task_names != names:
        raise ContinualError(f"{out_dir}: the checkpoint is for tasks {state.task_names}, this stream has {names}")
    run = _Run(stream, learner, router, out_dir, memoise, schedule or EvalConfig())
    run.restore(state)
    sinks = list(sinks) if sinks is not None else default_sinks(tracker, out_dir, names)
    start, record = time.perf_counter(), None
    todo = [s for s in steps(learner.schedule, len(names)) if s.row >= state.completed]
    bar = tqdm(todo, desc=f"{label}stream {stream.name}", unit="task", disable=not progress)
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
        [t.name for t in stream.tasks if t.kind == TOKENS],
    )
    totals = {"total_trainable_params": learner.trained_parameters(), "total_train_seconds": state.train_seconds}
    for sink in sinks:
        sink.on_end(result, totals)
    return result
