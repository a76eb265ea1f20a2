"""Sequence tasks: one label per text, read from the pooled features, scored by accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from continual.errors import ContinualError
from continual.model.outputs import Classified

if TYPE_CHECKING:
    from continual.streams.kinds import Encoded, OutputsOf, Score, Tokenizer
    from continual.streams.task import Split, Task


class SequenceKind:
    """A label per text (intents, topics, sentiment): the default ``type`` of a task."""

    name: str = "sequence"
    metric: str = "acc"
    label_noun: str = "labels"
    per_text: bool = True
    pooling: str | None = None  # the backbone's own pooling (mean or cls)

    def check_spec(self, raw: Mapping[str, Any], where: str) -> None:
        if raw.get("format") == "conll":
            raise ContinualError(f"{where}: format conll holds tagged tokens; set type: tokens")

    def load(self, spec: Any, base: Path, where: str, **build: Any) -> Task:
        from continual.streams.task import build_task

        read = {s: spec.read_pairs(s, base, where) for s in ("train", "test", "validation") if getattr(spec, s)}
        validation = read.pop("validation", None)
        return build_task(spec.name, **read, validation=validation, labels=spec.labels, where=where, **build)

    def outputs(self, labels: Sequence[str]) -> int:
        return len(labels)

    def routing_classes(self, labels: Sequence[str]) -> int:
        return len(labels)

    def encode(self, tokenizer: Tokenizer, texts: Sequence[str], max_length: int, what: str) -> Encoded:
        from continual.streams.kinds import Encoded

        return Encoded(tokenizer.tokenize(list(texts), max_length), None)

    def targets(self, split: Split, encoded: Encoded) -> list[Any]:
        return split.labels.tolist()

    def target_tensor(self, targets: Sequence[Any], device: torch.device) -> torch.Tensor:
        return torch.as_tensor(list(targets), device=device)

    def loss(self, logits: torch.Tensor, targets: Sequence[Any]) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, self.target_tensor(targets, logits.device))

    def fill(self, out: Classified, rows: slice, logits: torch.Tensor, mask: torch.Tensor) -> None:
        out.fill(rows, logits)

    def answer(self, text: str, starts: np.ndarray | None, row: Classified, labels: Sequence[str]) -> dict[str, Any]:
        return {"label": labels[int(row.labels)], "confidence": round(float(row.confidence), 6)}

    def score(
        self,
        task: Task,
        split: Split,
        own: int,
        routes: np.ndarray,
        outputs: OutputsOf,
        classes: Mapping[int, np.ndarray],
    ) -> Score:
        """Accuracy by class: a text counts when the head it was routed to gives it its own class."""
        from continual.streams.kinds import Score

        predicted = np.full(len(routes), -1, dtype=np.int64)  # the class each text was given (-1: none)
        for k in np.unique(routes[routes >= 0]).tolist():
            mine = routes == k
            predicted[mine] = classes[k][outputs(k, mine).labels[mine]]
        return Score(float(np.mean(predicted == classes[own][split.labels])), {})


SEQUENCE = SequenceKind()
