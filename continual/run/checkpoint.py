"""What a run has done so far (:class:`RunState`), saved after every step, and how a run is resumed from it.

The state is ``checkpoint.json`` in the run's output folder, next to ``adapters/`` (the learner's
files) and ``router.safetensors``. All are written atomically, the learner's and router's files
first, so a kill at any moment leaves the previous checkpoint valid and everything it names on disk.
RNG state is not stored: learners reseed from ``(seed, task index)`` at the start of every task, so a
resumed task draws the same numbers. The same object is what :func:`continual.run.experiment.run_stream`
returns: the accuracy matrices, the per-step reports and the metrics that follow from them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from continual import files, metrics, migrations
from continual.errors import ContinualError
from continual.learners.base import LearnReport
from continual.tracking.base import flatten

FILENAME = "checkpoint.json"
ORACLE_KEYS = ("oracle_bwt", "oracle_forgetting")
CONFIG = "config.yaml"  # the run's resolved config, as the runner saved it
ORIGIN = "job.json"  # how the job was started (Origin)
# config keys a resumption may change: how it shows progress, the threads and device it runs on
RESUMABLE = ("progress", "threads", "trainer.device")


def _cells(matrix: np.ndarray) -> list[list[float]]:
    """A matrix as JSON: its evaluated cells as ``[row, column, value]`` (a 1,000-task stream's matrix is
    mostly unevaluated, and a checkpoint is rewritten after every step)."""
    rows, columns = np.nonzero(np.isfinite(matrix))
    return [[int(i), int(j), float(matrix[i, j])] for i, j in zip(rows, columns)]


def _matrix(cells: list[list[float]], T: int) -> np.ndarray:
    """The matrix from :func:`_cells`."""
    matrix = np.full((T, T), np.nan)
    for i, j, value in cells:
        matrix[int(i), int(j)] = float(value)
    return matrix


@dataclass
class RunState:
    """Progress of one run: tasks completed, the matrices so far, the reports, the optimizer step, the tracking run.

    ``R[i, j]`` is task-agnostic accuracy (routed), ``oracle_R`` the same adapters given the true
    task, ``router_R`` the share of task ``j``'s inputs routed to ``j``; ``nan`` where not evaluated.
    """

    task_names: list[str]
    run_id: str | None = None
    completed: int = 0
    global_step: int = 0
    R: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    oracle_R: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    router_R: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    reports: list[LearnReport] = field(default_factory=list)
    finished: bool = False  # every step done and the tracking run ended FINISHED: nothing left to resume
    files: dict[str, str] = field(default_factory=dict)  # sha256 of every file a reload needs, by relative path

    def __post_init__(self) -> None:
        T = len(self.task_names)
        for name in ("R", "oracle_R", "router_R"):
            if getattr(self, name).shape != (T, T):
                setattr(self, name, np.full((T, T), np.nan))

    def record(self, row: int, tasks: int, scores: dict[int, tuple[float, float, float]], report: LearnReport) -> None:
        """Step done: ``tasks`` more tasks are learned, and row ``row`` of the matrices holds ``scores``
        (routed, task given, router accuracy) of the tasks evaluated (none: a step the schedule skips)."""
        for j, (accuracy, oracle, routed) in scores.items():
            self.R[row, j], self.oracle_R[row, j], self.router_R[row, j] = accuracy, oracle, routed
        self.completed += tasks
        self.global_step += report.steps
        self.reports.append(report)

    @property
    def last_row(self) -> int:
        """The last filled row of R (``-1`` before the first step)."""
        filled = [i for i in range(len(self.R)) if np.isfinite(self.R[i]).any()]
        return filled[-1] if filled else -1

    def metrics(self) -> dict[str, float]:
        """ACC, BWT, forgetting, learning accuracy over the rows filled so far (see :mod:`continual.metrics`), without
        task ids, and the same with the task given (``oracle_`` keys)."""
        if self.last_row < 0:
            return dict.fromkeys([*metrics.summary(np.zeros((1, 1))), *ORACLE_KEYS], float("nan"))
        given = metrics.summary(metrics.prefix(self.oracle_R, self.last_row))
        return {
            **metrics.summary(metrics.prefix(self.R, self.last_row)),
            **{f"oracle_{k}": given[k] for k in ("bwt", "forgetting")},
        }

    @property
    def router_accuracy(self) -> float:
        """Share of the last step's test inputs routed to their own task (mean over tasks)."""
        return _row_mean(self.router_R, self.last_row)

    @property
    def oracle_average(self) -> float:
        """Average accuracy of the same adapters under oracle routing, after the last step."""
        return _row_mean(self.oracle_R, self.last_row)

    @property
    def train_seconds(self) -> float:
        return sum(r.seconds for r in self.reports)

    @property
    def train_samples_per_second(self) -> float:
        return sum(r.examples for r in self.reports) / max(self.train_seconds, 1e-9)

    def save(self, directory: Path) -> Path:
        """Write ``checkpoint.json`` atomically."""
        raw = {
            "task_names": self.task_names,
            "run_id": self.run_id,
            "completed": self.completed,
            "global_step": self.global_step,
            "R": _cells(self.R),
            "router_acc": _cells(self.router_R),
            "oracle_acc": _cells(self.oracle_R),
            "reports": [dataclasses.asdict(r) for r in self.reports],
            "finished": self.finished,
            "files": self.files,
            "version": migrations.CHECKPOINT_VERSION,
        }
        return files.write_text(directory / FILENAME, json.dumps(raw, indent=1))

    @classmethod
    def load(cls, directory: Path) -> RunState | None:
        """The state saved in ``directory``, or None if there is none yet."""
        path = directory / FILENAME
        if not path.is_file():
            return None
        try:
            # checkpoints written before the flag: a finished run had written its summary
            raw = migrations.checkpoint(json.loads(path.read_text()), (directory / "summary.txt").is_file())
            T = len(raw["task_names"])
            return cls(
                raw["task_names"],
                raw["run_id"],
                raw["completed"],
                raw["global_step"],
                _matrix(raw["R"], T),
                _matrix(raw["oracle_acc"], T),
                _matrix(raw["router_acc"], T),
                [LearnReport(**r) for r in raw["reports"]],
                bool(raw["finished"]),
                dict(raw["files"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ContinualError(f"{path}: not a usable checkpoint ({exc}); delete it to start the run afresh") from exc


def _row_mean(matrix: np.ndarray, row: int) -> float:
    """Mean of row ``row``'s evaluated cells."""
    return metrics.average_accuracy(metrics.prefix(matrix, row)) if row >= 0 else float("nan")


def resume_state(out_dir: Path, config: dict, resume: bool) -> RunState | None:
    """The state to continue in ``out_dir``: with ``resume``, the saved one (after checking that ``config`` is
    the one it was made with, and that the run is not finished); without, None, after refusing a folder that
    already holds a run."""
    state = RunState.load(out_dir)
    if not resume:
        if state is not None:
            raise ContinualError(
                f"{out_dir} already holds a run; continue it with `continual resume {out_dir}` "
                "or choose another hydra.run.dir"
            )
        return None
    if state is not None and state.finished:
        raise ContinualError(
            f"{out_dir}: the run is finished ({state.completed} of {len(state.task_names)} tasks "
            "learned); there is nothing to resume"
        )
    if state is None or not (out_dir / CONFIG).is_file():
        return None  # killed before the first checkpoint: nothing to continue, start afresh here
    saved, now = _comparable(read_config(out_dir)), _comparable(config)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise ContinualError(
                f"resume: config differs from the run in {out_dir} at '{key}': "
                f"saved {saved.get(key)!r}, now {now.get(key)!r}"
            )
    return state


def read_config(run_dir: Path) -> dict:
    """A run's ``config.yaml`` as today's code reads it (see :func:`continual.migrations.config`)."""
    return migrations.config(yaml.safe_load((run_dir / CONFIG).read_text()) or {})


def _comparable(config: dict) -> dict[str, str]:
    return {k: v for k, v in flatten(config).items() if k != "resume" and k not in RESUMABLE}


@dataclass(frozen=True)
class Origin:
    """How a job was started, beside its config: what ``continual resume`` needs to run it again (``job.json``).

    ``launch_dir`` is where relative data paths resolve; ``choices`` the chosen option of each config
    group (the run's tags); ``job`` its index in a multirun; ``log_file`` the log it appends to.
    """

    launch_dir: str
    choices: dict[str, str]
    job: int | None = None
    log_file: str | None = None

    def save(self, out_dir: Path) -> None:
        files.write_text(out_dir / ORIGIN, json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, out_dir: Path) -> Origin:
        path = out_dir / ORIGIN
        if not (out_dir / CONFIG).is_file() or not path.is_file():
            raise ContinualError(
                f"continual resume: {out_dir} holds no run to resume (no {CONFIG} and {ORIGIN}; "
                "a run stopped before it saved its config starts again from the command line)"
            )
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ContinualError(f"{path}: not a usable job record ({exc})") from exc


def resume_config(run_dir: Path, overrides: list[str]) -> dict:
    """The config a run was made with (``config.yaml``), ``resume`` on, and ``key=value`` changes to the keys a
    resumption may change (:data:`RESUMABLE`); any other key is refused, since the run's config is fixed."""
    config = read_config(run_dir)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or key not in RESUMABLE:
            raise ContinualError(
                f"continual resume: {override!r}: a resumed run keeps its config; only "
                f"{', '.join(f'{k}=...' for k in RESUMABLE)} may change"
            )
        set_key(config, key, value, "continual resume")
    config["resume"] = True
    return config


def set_key(config: dict, key: str, value: str, where: str) -> None:
    """``config[a][b][c] = value`` for ``key`` ``a.b.c`` (the value read as YAML); one line if ``a.b`` is not a
    group of keys (``seed.x=1``: seed is a number)."""
    node, path = config, []
    *parents, last = key.split(".")
    for part in parents:
        path.append(part)
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ContinualError(f"{where}: {key}={value}: {'.'.join(path)} is a value ({node!r}), not a group of keys")
    node[last] = yaml.safe_load(value)
