"""An in-memory tracker for tests and notebooks: everything logged stays in plain dicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from continual.tracking.base import DataInput, flatten, metric_key


class MemoryTracker:
    """Records params, metric histories ``{key: [(step, value)]}``, artifact paths and the final status."""

    def __init__(self, run_id: str = "memory", folder: Path | None = None) -> None:
        self.run_id = run_id
        self.uri = "memory:"
        self.page = ""  # no UI shows it
        self.params: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.inputs: list[DataInput] = []
        self.status: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(flatten(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            if math.isfinite(value):
                self.metrics.setdefault(metric_key(key), []).append((step, float(value)))

    def log_history(self, rows: Sequence[tuple[Mapping[str, float], int]]) -> None:
        for metrics, step in rows:
            self.log_metrics(metrics, step)

    def logged_steps(self, key: str) -> set[int]:
        return {step for step, _ in self.metrics.get(metric_key(key), [])}

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def log_inputs(self, inputs: Sequence[DataInput]) -> None:
        self.inputs.extend(inputs)

    def finish(self, status: str = "FINISHED") -> None:
        self.status = status
