"""The oracle router: every input goes to its true task's adapter (the task-incremental upper bound)."""

from __future__ import annotations

import numpy as np

from continual.errors import ContinualError
from continual.routers.base import RouterInputs, Routing
from continual.streams import Task


class OracleRouter:
    """Returns the ground-truth task id; needs it, so it cannot serve task-agnostic prediction."""

    learned = False
    accept_rate: float | None = None

    def __init__(self) -> None:
        self.num_tasks = 0

    def add_task(
        self, index: int, task: Task, train: RouterInputs | None = None, validation: RouterInputs | None = None
    ) -> None:
        self.num_tasks = index + 1

    def route(self, inputs: RouterInputs) -> Routing:
        if inputs.task_ids is None:
            raise ContinualError(
                "router=oracle needs the true task of every input; it cannot route new text. "
                "Train with a learned router (router=prototype, classifier or entropy) to predict"
            )
        return Routing(np.asarray(inputs.task_ids, dtype=np.int64))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"num_tasks": np.array([self.num_tasks])}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.num_tasks = int(state["num_tasks"][0])
