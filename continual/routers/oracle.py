"""The oracle router: every input goes to its true task's adapter (the task-incremental upper bound)."""

from __future__ import annotations

import torch

from continual.errors import ContinualError
from continual.routers.base import RoutingBatch
from continual.streams import Task


class OracleRouter:
    """Returns the ground-truth task id; needs it, so it cannot serve task-agnostic prediction."""

    def __init__(self) -> None:
        self.num_tasks = 0

    def add_task(self, index: int, task: Task) -> None:
        self.num_tasks = index + 1

    def route(self, batch: RoutingBatch) -> torch.Tensor:
        if batch.task_ids is None:
            raise ContinualError("router=oracle needs the true task of every input; use a learned router to predict")
        return batch.task_ids
