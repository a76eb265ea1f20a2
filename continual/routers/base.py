"""The router protocol: per-example task decisions for a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from continual.streams import Task


@dataclass(frozen=True, eq=False)
class RoutingBatch:
    """What a router may look at. ``task_ids`` is the ground truth, known only in evaluation."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    task_ids: torch.Tensor | None = None


class Router(Protocol):
    """Maps each input to the index of a learned task (its adapter); -1 means "abstain"."""

    def add_task(self, index: int, task: Task) -> None:
        """Update the router after task ``index`` has been learned."""
        ...

    def route(self, batch: RoutingBatch) -> torch.Tensor:
        """Task index per example, shape ``[batch]``, dtype long."""
        ...
