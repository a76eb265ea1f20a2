"""Per-task checkpoints: what a killed run needs to continue from its first unfinished task.

The checkpoint is ``checkpoint.json`` in the run's output folder, next to ``adapters/`` (one
safetensors file per learned task). Both are written atomically (temp file + rename), adapters first,
so a kill at any moment leaves the previous checkpoint valid. RNG state is not stored: learners reseed
from ``(seed, task index)`` at the start of every task, so a resumed task draws the same numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from continual.errors import ContinualError

FILENAME = "checkpoint.json"
VERSION = 2


def _cells(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in matrix]


def _matrix(cells: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in cells], dtype=float)


@dataclass
class Checkpoint:
    """Progress of one run: tasks completed, R so far, the global optimizer step and the tracking run."""

    task_names: list[str]
    run_id: str | None = None
    completed: int = 0
    global_step: int = 0
    R: list[list[float | None]] = field(default_factory=list)
    router_acc: list[list[float | None]] = field(default_factory=list)
    oracle_acc: list[list[float | None]] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    version: int = VERSION

    def record(self, R: np.ndarray, router_acc: np.ndarray, oracle_acc: np.ndarray, global_step: int,
               report: dict, tasks: int = 1) -> None:
        """One step done: usually one task; a joint learner's single step completes ``tasks`` at once."""
        self.completed += tasks
        self.global_step = global_step
        self.R, self.router_acc, self.oracle_acc = _cells(R), _cells(router_acc), _cells(oracle_acc)
        self.reports.append(report)

    def matrices(self, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """R, router accuracy and oracle-routed accuracy so far (``nan`` where not yet evaluated)."""
        if not self.R:
            return np.full((T, T), np.nan), np.full((T, T), np.nan), np.full((T, T), np.nan)
        return _matrix(self.R), _matrix(self.router_acc), _matrix(self.oracle_acc)

    def save(self, directory: Path) -> Path:
        path = directory / FILENAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path) -> Checkpoint | None:
        """The checkpoint in ``directory``, or None if there is none yet."""
        path = directory / FILENAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") != VERSION:
                raise ValueError(f"version {raw.get('version')}, expected {VERSION}")
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise ContinualError(f"{path}: not a usable checkpoint ({exc}); delete it to start the run afresh") from exc
