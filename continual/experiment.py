"""One continual-learning run: learn each task, update the router, fill a row of R, log everything.

Usable without Hydra::

    stream = DemoStream().load()
    backbone = Backbone.load()
    learner = AdapterPerTask(backbone, BottleneckConfig(), TrainerConfig())
    result = run_stream(stream, learner, OracleRouter(), MemoryTracker(), Path("out"))
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from continual import metrics, plots
from continual.checkpoint import Checkpoint
from continual.errors import ContinualError
from continual.evaluation import Evaluator, encode_texts
from continual.learners import LearnReport, Learner, check_router
from continual.routers.base import Router, check_stream
from continual.routers.state import save_router
from continual.streams import Stream
from continual.tracking.base import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """The accuracy matrix (0-based; ``nan`` above the diagonal), its metrics and per-task reports."""

    task_names: list[str]
    R: np.ndarray
    reports: list[LearnReport] = field(default_factory=list)
    router_acc: np.ndarray | None = None
    oracle_acc: np.ndarray | None = None
    confusion: np.ndarray | None = None  # final routing counts: true task x (routed task..., rejected)
    final_metrics: dict[str, float] = field(default_factory=dict)  # the last logged row
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        return metrics.summary(self.R)

    @property
    def router_accuracy(self) -> float:
        """Share of the final step's test inputs routed to their own task (mean over tasks)."""
        return float(np.mean(self.router_acc[-1])) if self.router_acc is not None else float("nan")

    @property
    def oracle_average(self) -> float:
        """Average accuracy of the same adapters under oracle routing, after the last task."""
        return float(np.mean(self.oracle_acc[-1])) if self.oracle_acc is not None else float("nan")

    @property
    def train_seconds(self) -> float:
        return sum(r.seconds for r in self.reports)

    @property
    def train_samples_per_second(self) -> float:
        return sum(r.examples for r in self.reports) / max(self.train_seconds, 1e-9)


def write_matrix_csv(R: np.ndarray, names: list[str], path: Path) -> Path:
    """Header = task names; row i = accuracies after training task i (blank for unseen tasks)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in R:
            writer.writerow(["" if not np.isfinite(v) else f"{v:.6f}" for v in row])
    tmp.replace(path)
    return path


def format_matrix(R: np.ndarray, names: list[str], width: int = 10) -> str:
    """Plain-text accuracy matrix in percent, for the terminal summary (names cut to ``width``)."""
    short = [n[:width] for n in names]
    lines = [" " * width + "".join(n.rjust(width + 1) for n in short)]
    for i, name in enumerate(short):
        cells = "".join((f"{100 * v:.1f}" if np.isfinite(v) else "").rjust(width + 1) for v in R[i])
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def _confusion(routes: list[np.ndarray], T: int) -> np.ndarray:
    """Counts: row = true task, column = routed task, last column = rejected."""
    counts = np.zeros((T, T + 1), dtype=np.int64)
    for j, r in enumerate(routes):
        counts[j] = np.bincount(np.where(r < 0, T, r), minlength=T + 1)[: T + 1]
    return counts


def write_confusion_csv(counts: np.ndarray, names: list[str], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true_task", *names, "rejected"])
        for name, row in zip(names, counts):
            writer.writerow([name, *row.tolist()])
    return path


def run_stream(stream: Stream, learner: Learner, router: Router, tracker: Tracker, out_dir: Path,
               progress: bool = True, memoise: bool = True, checkpoint: Checkpoint | None = None,
               label: str = "") -> RunResult:
    """Learn ``stream`` task by task with ``learner``; evaluate every seen task through ``router``.

    After every task the adapters, the router state, ``accuracy_matrix.csv`` and ``checkpoint.json``
    in ``out_dir`` are brought up to date. Passing a ``checkpoint`` with completed tasks resumes after
    them: their adapters are loaded from ``out_dir/adapters``, the router relearns them, and their
    metrics are not logged again. Training losses of a task are logged only once the task is done,
    so a killed task leaves no partial history behind. ``memoise=False`` recomputes every prediction
    at every step (the plain path). With a router that can reject (``accept_rate``) and a stream
    with out-of-scope texts, the share of them rejected is logged as ``oos_recall``. ``label``
    prefixes progress bars and log lines (a multirun's job index).

    A joint learner (``learner.joint``: multi-task training, the upper bound) has no stream: it learns
    every task at once at the last step (``learn_all``), so only the final row of R is filled and
    logged; BWT and forgetting are undefined (``nan``, not logged).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = stream.task_names
    T = len(names)
    check_stream(router, stream.tasks)
    check_router(learner, router, f"learner {type(learner).__name__}")
    joint = bool(getattr(learner, "joint", False))
    checkpoint = checkpoint or Checkpoint(task_names=names)
    if checkpoint.task_names != names:
        raise ContinualError(f"{out_dir}: the checkpoint is for tasks {checkpoint.task_names}, this stream has {names}")
    R, router_acc, oracle_acc = checkpoint.matrices(T)
    result = RunResult(names, R, router_acc=router_acc, oracle_acc=oracle_acc)
    done = checkpoint.completed

    def encode(texts):
        return encode_texts(learner, texts)

    if done:
        learner.load(out_dir / "adapters", stream.tasks[:done])
        result.reports.extend(LearnReport(**r) for r in checkpoint.reports)
        log.info("resuming after task %d/%d (%s)", done, T, names[done - 1])
    for i in range(done):  # routers are rebuilt from the data, exactly as they were built the first time
        router.add_task(i, stream.tasks[i], encode)
    backbone_params = sum(p.numel() for p in learner.backbone.parameters())
    saved_bytes = sum(p.stat().st_size for p in (out_dir / "adapters").glob("*.safetensors")) if done else 0
    rejects = getattr(router, "accept_rate", None) is not None
    evaluator = Evaluator(learner, router, stream.tasks, memoise=memoise,
                          out_of_scope=stream.out_of_scope if rejects else ())
    routes: list[np.ndarray] = []
    start = time.perf_counter()
    first = max(done, T - 1) if joint else done  # a joint learner has one step: the last
    tasks_bar = tqdm(range(first, T), desc=f"{label}stream {stream.name}", unit="task", disable=not progress)
    for i in tasks_bar:
        task = stream.tasks[i]
        tasks_bar.set_postfix(task=f"{i + 1}/{T} {task.name}")
        losses: list[tuple[int, float]] = []
        learn = partial(learner.learn_all, stream.tasks) if joint else partial(learner.learn, task)  # type: ignore[attr-defined]
        report = learn(lambda step, loss: losses.append((step, loss)))
        router_start = time.perf_counter()
        for j in range(0 if joint else i, i + 1):  # joint: every task became known at this one step
            router.add_task(j, stream.tasks[j], encode)
        router_seconds = time.perf_counter() - router_start
        evaluator.new_step()
        eval_start = time.perf_counter()
        routes = []
        for j in range(i + 1):
            ev = evaluator.evaluate(j)
            R[i, j], router_acc[i, j], oracle_acc[i, j] = ev.accuracy, ev.router_accuracy, ev.oracle_accuracy
            routes.append(ev.routes)
        row = metrics.summary(metrics.prefix(R, i))
        row.update({f"acc/{names[j]}": R[i, j] for j in range(i + 1)})
        row.update({f"router_acc/{names[j]}": router_acc[i, j] for j in range(i + 1)})
        row.update({f"oracle_acc/{names[j]}": oracle_acc[i, j] for j in range(i + 1)})
        row.update({
            "router_acc": float(np.mean(router_acc[i, : i + 1])),
            "oracle_avg_acc": float(np.mean(oracle_acc[i, : i + 1])),
            f"val_acc/{report.task}": report.val_acc,
            "trainable_params": report.trainable_params,
            "trainable_share": report.trainable_params / backbone_params,
            "train_seconds": report.seconds,
            "train_samples_per_s": report.samples_per_second,
            "router_seconds": router_seconds,
        })
        if rejects:
            row["rejected_in_scope"] = float(np.mean(np.concatenate(routes) < 0))
            if evaluator.has_out_of_scope:
                row["oos_recall"] = evaluator.rejection_rate()
        row["eval_seconds"] = time.perf_counter() - eval_start
        saved = learner.save(out_dir / "adapters")
        # bytes of everything a reload needs, and what this step added (a per-task adapter: its file)
        row["artifact_bytes"] = sum(p.stat().st_size for p in saved)
        row["task_artifact_bytes"] = row["artifact_bytes"] - saved_bytes
        saved_bytes = row["artifact_bytes"]
        save_router(router, out_dir, names[: i + 1], learner.backbone.name)
        tracker.log_history([({f"train_loss/{report.task}": loss, "train_loss": loss}, checkpoint.global_step + step)
                             for step, loss in losses])
        tracker.log_metrics(row, step=i)
        # The checkpoint is written last: a kill before this line redoes task i on resume (and can
        # only repeat metrics logged in the instant between the two lines above and this one).
        checkpoint.record(R, router_acc, oracle_acc, checkpoint.global_step + report.steps, dataclasses.asdict(report),
                          tasks=T if joint else 1)
        checkpoint.save(out_dir)
        write_matrix_csv(R, names, out_dir / "accuracy_matrix.csv")
        result.reports.append(report)
        result.final_metrics = row
        log.info("%safter task %d/%d %s: avg_acc=%.4f router_acc=%.4f val_acc=%.4f %.1fs (%.0f samples/s)", label,
                 i + 1, T, report.task, row["avg_acc"], row["router_acc"], report.val_acc, report.seconds, report.samples_per_second)
    result.seconds = time.perf_counter() - start
    # run-level totals for `continual report` (the per-step trainable_params/train_seconds are one task's)
    tracker.log_metrics({"total_trainable_params": learner.trained_parameters(),
                         "total_train_seconds": result.train_seconds}, step=T - 1)

    if len(routes) != T:  # everything was already done (resumed after the last task): route once more
        evaluator.new_step()
        routes = [evaluator.evaluate(j).routes for j in range(T)]
    result.confusion = _confusion(routes, T)
    artifacts = [
        out_dir / "accuracy_matrix.csv",
        write_matrix_csv(oracle_acc, names, out_dir / "oracle_accuracy_matrix.csv"),
        write_confusion_csv(result.confusion, names, out_dir / "router_confusion.csv"),
        plots.confusion(result.confusion, names, out_dir / "router_confusion.png"),
        plots.heatmap(R, names, out_dir / "accuracy_matrix.png"),
        plots.curves(R, names, out_dir / "accuracy_curves.png"),
    ]
    summary = {"task_names": names, "R": [[None if not np.isfinite(v) else v for v in r] for r in R],
               "oracle_R": [[None if not np.isfinite(v) else v for v in r] for r in oracle_acc],
               **{k: v if np.isfinite(v) else None for k, v in result.metrics.items()},  # nan is not JSON
               "router_acc": result.router_accuracy, "oracle_avg_acc": result.oracle_average,
               "train_seconds": result.train_seconds,
               "train_samples_per_s": result.train_samples_per_second, "seconds": result.seconds}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    artifacts.append(out_dir / "results.json")
    for path in artifacts:
        tracker.log_artifact(path)
    tracker.log_artifact(out_dir / "adapters", "adapters")
    tracker.log_artifact(out_dir / "router.safetensors")
    return result
