"""Sinks: where the records of a run go. Each consumes every step's record and the run's end.

* :class:`FileSink`: ``accuracy_matrix.csv`` after every step; at the end the task-given matrix,
  router confusion, plots, ``results.json`` and ``matrices.npz`` (R, R given, router R: compressed).
  Past :data:`TABLE_LIMIT` tasks only the compressed matrices are written (a CSV of R would be
  megabytes rewritten after every step, a plot unreadable).
* :class:`continual.run.calibration.CalibrationSink`: at the end, how in-scope the tasks' validation inputs
  look to the final router (what makes ``predict`` abstain on far-off text).
* :class:`TrackerSink`: the step's training losses and metric row; at the end the run totals and
  every file worth keeping (the files sink's outputs, the learner's files, the router state, calibration).
* :class:`CheckpointSink`: ``checkpoint.json``, last, so that it never names a step whose outputs
  are not on disk.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from continual import files, plots
from continual.learners import AdapterPerTask
from continual.learners.base import Learner
from continual.routers.base import Router
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.run.calibration import CALIBRATION, CalibrationSink
from continual.run.checkpoint import RunState
from continual.streams import Task
from continual.tracking.base import Tracker

if TYPE_CHECKING:
    from continual.run.experiment import RunResult, StepRecord

TASKS_LEARNED = "tasks_learned"  # every step's last metric (continual.run.experiment.metric_row)


class Sink(Protocol):
    """Consumes a run's records: :meth:`on_step` after every step, :meth:`on_end` once after the last."""

    def on_step(self, record: StepRecord, state: RunState) -> None: ...

    def on_end(self, result: RunResult, totals: dict[str, float]) -> None: ...


TABLE_LIMIT = 100  # tasks up to which R is also a CSV after every step, plotted, and written into results.json
MATRICES = "matrices.npz"
SUMMARY_LIMIT = 20  # tasks up to which the closing summary prints R
FUSION_ATTENTION = "fusion_attention.json"  # transfer=fusion: what each fused task attends to (FileSink)
ENTITY_SCORES = "entity_f1.json"  # token tasks' routed micro and per-type F1, rewritten after every step


def _csv_cell(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.6f}"


def write_matrix_csv(R: np.ndarray, names: list[str], path: Path) -> Path:
    """Header = task names; row i = accuracies after training task i (blank for unseen tasks); atomic."""
    with files.atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        writer.writerows([_csv_cell(v) for v in row] for row in R)
    return path


def write_confusion_csv(counts: np.ndarray, names: list[str], path: Path) -> Path:
    """Rows = true task, columns = routed task, then ``rejected``; atomic."""
    with files.atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true_task", *names, "rejected"])
        writer.writerows([name, *row.tolist()] for name, row in zip(names, counts))
    return path


def write_matrices(state: RunState, confusion: np.ndarray, path: Path) -> Path:
    """R, R with the task given, router R (``nan``: not evaluated), the routing confusion and the task names,
    as one compressed ``.npz``, atomically: the full matrices of any stream length (``numpy.load`` reads it)."""
    with files.atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(
            fh,
            R=state.R,
            oracle_R=state.oracle_R,
            router_R=state.router_R,
            confusion=confusion,
            task_names=np.array(state.task_names),
        )
    return path


def _json_cells(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in matrix]


def results_json(result: RunResult) -> dict:
    """The run's matrices and final metrics as plain JSON (``null`` for undefined values, never NaN)."""
    state = result.state
    final = {k: v if np.isfinite(v) else None for k, v in result.metrics.items()}
    small = len(state.task_names) <= TABLE_LIMIT  # longer streams: the matrices are in matrices.npz
    return {
        "task_names": state.task_names,
        "R": _json_cells(state.R) if small else MATRICES,
        "oracle_R": _json_cells(state.oracle_R) if small else MATRICES,
        **final,
        "router_acc": state.router_accuracy,
        "oracle_avg_acc": state.oracle_average,
        "train_seconds": state.train_seconds,
        "train_samples_per_s": state.train_samples_per_second,
        "seconds": result.seconds,
    }


class FileSink:
    """The output folder's matrices, plots and results; ``outputs`` lists what it wrote at the end.

    ``attention``: what each fused task attends to (:meth:`AdapterPerTask.fusion_attention`), written at the end
    as ``fusion_attention.json`` and a heatmap when there is any."""

    def __init__(
        self, out_dir: Path, names: list[str], attention: Callable[[], dict[str, dict[str, float]]] | None = None
    ) -> None:
        self.out_dir, self.names, self.attention = out_dir, names, attention
        self.outputs: list[Path] = []

    def on_step(self, record: StepRecord, state: RunState) -> None:
        if len(self.names) <= TABLE_LIMIT:
            write_matrix_csv(state.R, self.names, self.out_dir / "accuracy_matrix.csv")
        scored = {
            self.names[j]: {"f1": e.accuracy, "oracle_f1": e.oracle_accuracy, "by_type": e.by_type}
            for j, e in record.evals.items()
            if e.by_type
        }
        if scored:  # token tasks: per-type entity scores after this step (routed)
            body = {"after_task": self.names[record.step.row], "tasks": scored}
            files.write_text(self.out_dir / ENTITY_SCORES, json.dumps(body, indent=2))

    def on_end(self, result: RunResult, totals: dict[str, float]) -> None:
        out, state, names = self.out_dir, result.state, self.names
        tables = len(names) <= TABLE_LIMIT
        self.outputs = [
            *(
                [
                    out / "accuracy_matrix.csv",
                    write_matrix_csv(state.oracle_R, names, out / "oracle_accuracy_matrix.csv"),
                    write_confusion_csv(result.confusion, names, out / "router_confusion.csv"),
                    plots.confusion(result.confusion, names, out / "router_confusion.png"),
                    plots.heatmap(state.R, names, out / "accuracy_matrix.png"),
                    plots.curves(state.R, names, out / "accuracy_curves.png"),
                ]
                if tables
                else []
            ),
            write_matrices(state, result.confusion, out / MATRICES),
            files.write_text(out / "results.json", json.dumps(results_json(result), indent=2)),
            *([out / ENTITY_SCORES] if (out / ENTITY_SCORES).is_file() else []),
            *self._attention(),
        ]

    def _attention(self) -> list[Path]:
        """``fusion_attention.json`` (fused task -> source task -> mean weight) and its heatmap, if any task fused."""
        attention = self.attention() if self.attention is not None else {}
        if not attention:
            return []
        json_path = files.write_text(self.out_dir / FUSION_ATTENTION, json.dumps(attention, indent=2))
        if len(self.names) > TABLE_LIMIT:
            return [json_path]
        rows = list(attention)
        grid = np.array([[attention[r].get(c, np.nan) for c in self.names] for r in rows])
        return [json_path, plots.fusion_attention(grid, rows, self.names, self.out_dir / "fusion_attention.png")]


class TrackerSink:
    """Metric rows and training losses per step; run totals and the files worth keeping at the end.

    Nothing is logged twice: a step whose row reached the tracker before a kill (the row's last key,
    ``tasks_learned``, is logged last) is skipped when the resumed run redoes it, and so are losses and
    totals already there. This closes the gap between logging a step and checkpointing it.
    """

    DONE = TASKS_LEARNED  # the row's key logged last: its presence at a step means the whole step was logged
    OLD_DONE = "avg_acc"  # what marked a logged step before evaluation could skip steps (runs made then)

    def __init__(self, tracker: Tracker, out_dir: Path, files_sink: FileSink) -> None:
        self.tracker, self.out_dir, self.files = tracker, out_dir, files_sink
        self.logged = {key: tracker.logged_steps(key) for key in (self.DONE, "train_loss", "total_train_seconds")}
        self.logged[self.DONE] |= tracker.logged_steps(self.OLD_DONE)

    def on_step(self, record: StepRecord, state: RunState) -> None:
        i, task = record.step.row, record.report.task
        if i in self.logged[self.DONE]:
            return
        losses = [(step, loss) for step, loss in record.losses if step not in self.logged["train_loss"]]
        rest = {k: v for k, v in record.row.items() if k != self.DONE}
        self.tracker.log_history(
            [({f"train_loss/{task}": loss, "train_loss": loss}, step) for step, loss in losses]
            + [(rest, i), ({self.DONE: record.row[self.DONE]}, i)]
        )

    def on_end(self, result: RunResult, totals: dict[str, float]) -> None:
        # run-level totals for `continual report` (the per-step trainable_params/train_seconds are one step's)
        last = len(result.state.task_names) - 1
        if last not in self.logged["total_train_seconds"]:
            self.tracker.log_metrics(totals, step=last)
        for path in self.files.outputs:
            self.tracker.log_artifact(path)
        self.tracker.log_artifact(self.out_dir / "adapters", "adapters")
        for kept in (ROUTER_FILE, CALIBRATION):
            if (self.out_dir / kept).is_file():
                self.tracker.log_artifact(self.out_dir / kept)


class CheckpointSink:
    """``checkpoint.json`` after every step (a kill before it redoes the step on resume)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_step(self, record: StepRecord, state: RunState) -> None:
        state.save(self.out_dir)

    def on_end(self, result: RunResult, totals: dict[str, float]) -> None:
        pass


def default_sinks(
    tracker: Tracker, out_dir: Path, learner: Learner, router: Router, tasks: Sequence[Task]
) -> list[Sink]:
    """The output folder's files, the calibration, the tracker, the checkpoint: in that order (see the module
    docstring)."""
    attention = learner.fusion_attention if isinstance(learner, AdapterPerTask) else None
    files_sink = FileSink(out_dir, [t.name for t in tasks], attention)
    calibration = CalibrationSink(out_dir, learner, router, tasks)
    return [files_sink, calibration, TrackerSink(tracker, out_dir, files_sink), CheckpointSink(out_dir)]


def format_matrix(R: np.ndarray, names: list[str], width: int = 10) -> str:
    """Plain-text accuracy matrix in percent, for the terminal summary (names cut to ``width``)."""
    short = [n[:width] for n in names]
    lines = [" " * width + "".join(n.rjust(width + 1) for n in short)]
    for i, name in enumerate(short):
        cells = "".join((f"{100 * v:.1f}" if np.isfinite(v) else "").rjust(width + 1) for v in R[i])
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}" if np.isfinite(value) else "n/a"


def summary_text(result: RunResult, tracker: Tracker, out_dir: Path) -> str:
    """The closing summary: the matrix, both protocols' metrics, where things are and how to look at them."""
    state = result.state
    m = {**result.last_row, **result.metrics}
    lines = [
        "",
        "accuracy matrix R[i, j] (%), no task id: row = after training task i, column = task j",
        format_matrix(state.R, state.task_names)
        if len(state.task_names) <= SUMMARY_LIMIT
        else f"({len(state.task_names)} tasks: the matrices are in {out_dir / MATRICES})",
        "",
        f"{'':20}{'no task id':>12}{'task id given':>15}",
        f"{'ACC (avg accuracy)':20}{_pct(m['avg_acc']):>12}{_pct(state.oracle_average):>15}",
        f"{'BWT':20}{_pct(m['bwt']):>12}{_pct(m['oracle_bwt']):>15}",
        f"{'forgetting':20}{_pct(m['forgetting']):>12}{_pct(m['oracle_forgetting']):>15}",
        f"learning accuracy   {_pct(m['learning_acc'])}",
        f"router accuracy     {_pct(state.router_accuracy)} (inputs sent to their own task)",
        *([f"scored by F1        {', '.join(result.f1_tasks)} (entity micro F1 in R)"] if result.f1_tasks else []),
        *([f"OOS recall          {_pct(m['oos_recall'])} (out-of-scope inputs rejected)"] if "oos_recall" in m else []),
        f"train time          {state.train_seconds:.1f} s ({state.train_samples_per_second:.0f} samples/s); "
        f"total {result.seconds:.1f} s",
        f"outputs             {out_dir}",
        f"MLflow run          {tracker.run_id} in {tracker.uri}",
    ]
    if tracker.uri.startswith("sqlite:"):
        lines.append(f"open the UI with    mlflow ui --backend-store-uri {tracker.uri}")
    if tracker.page:
        lines.append(f"the run's page      {tracker.page}")
    return "\n".join(lines)
