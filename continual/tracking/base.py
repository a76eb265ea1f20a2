"""The tracker protocol: where params, per-step metrics and artifacts of one run go."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from continual.streams import Stream

_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def metric_key(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . /`` and spaces in keys; replace anything else with ``_``."""
    return _METRIC_UNSAFE.sub("_", key)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [x, y]}`` -> ``{"a.b": "1", "c.0": "x", "c.1": "y"}`` (params are strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
            flat.update(flatten({str(k): v for k, v in enumerate(value)}, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


@dataclass(frozen=True)
class DataInput:
    """One split a run learned from or was scored on, for data lineage (MLflow's Datasets column)."""

    name: str  # <task>/<split>
    context: str  # train | validation | test
    digest: str  # of the texts and labels, in order: equal digests, equal data
    source: str  # a file, a Hub dataset split, or the generator
    rows: int
    labels: int


def digest(texts: Sequence[str], labels: Sequence[int | str] | np.ndarray) -> str:
    """A short fingerprint of labelled texts (order included)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(texts), [x if isinstance(x, str) else int(x) for x in labels]]).encode())
    return h.hexdigest()[:12]


def data_inputs(stream: Stream) -> list[DataInput]:
    """Every task's train, validation and test split as a :class:`DataInput`."""
    return [
        DataInput(
            f"{task.name}/{context}",
            context,
            digest(split.texts, [" ".join(map(str, t)) for t in split.tags] if split.tags else split.labels),
            split.source,
            len(split),
            len(task.labels),
        )
        for task in stream.tasks
        for context, split in (("train", task.train), ("validation", task.validation), ("test", task.test))
        if len(split)
    ]


class Tracker(Protocol):
    """One run of one experiment: where its params, per-step metrics and files go.

    A new tracker provides ``run_id`` and ``uri`` (printed in the summary, stored in the checkpoint
    so that a resumed run continues the same tracking run), ``page`` (where a UI shows the run; empty if
    none does) and the methods below. Metric keys arrive as written (``acc/<task>``); a tracker that
    cannot store some characters maps them with :func:`metric_key`.
    """

    run_id: str
    uri: str
    page: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_history(self, rows: Sequence[tuple[Mapping[str, float], int]]) -> None:
        """Many ``(metrics, step)`` rows at once (a task's training losses): one round trip, not one per row."""
        ...

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` already has a value: a resumed run logs nothing a second time."""
        ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file, or a folder's contents, under ``artifact_path``."""
        ...

    def log_inputs(self, inputs: Sequence[DataInput]) -> None:
        """Record the data the run learned from and was scored on (once, when the run starts)."""
        ...

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        ...
