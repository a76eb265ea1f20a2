"""Confidence routing (the AdapterCL idea): run every learned adapter, keep the most certain head.

The score of task k for an input is its head's certainty, 1 - entropy / log(number of labels), so
that heads with different label counts compare on one scale. It needs one adapter pass per learned
task and input: T times the cost of a feature router, a reference rather than a product default.
Evaluation memoises those passes per (test set, adapter), so a whole run still costs O(T·N) passes.
"""

from __future__ import annotations

import numpy as np

from continual.routers.base import Reads, RouterInputs, Routing, check_accept_rate, decide, rejection_threshold
from continual.streams import Task


class EntropyRouter:
    """Routes to the task whose head is most certain; ``accept_rate`` calibrates rejection on validation.

    The rejection threshold is computed from each task's validation certainties when the task is
    learned; no text is kept, so an older task's scores do not see later adapters (which can only
    raise an input's best certainty, making the stored scores conservative).
    """

    reads = Reads.TASK_HEADS

    def __init__(self, accept_rate: float | None = None) -> None:
        check_accept_rate(accept_rate, "router")
        self.accept_rate = accept_rate
        self.num_tasks = 0
        self.validation_scores = np.zeros(0)
        self.threshold = -np.inf

    def _scores(self, inputs: RouterInputs) -> np.ndarray:
        return np.stack([inputs.certainty(k) for k in range(self.num_tasks)], axis=1)

    def add_task(self, index: int, task: Task, train: RouterInputs, validation: RouterInputs) -> None:
        self.num_tasks = index + 1
        if self.accept_rate is not None:
            best = self._scores(validation).max(1)
            self.validation_scores = np.concatenate([self.validation_scores, best])
            self.threshold = rejection_threshold(self.validation_scores, self.accept_rate)

    def route(self, inputs: RouterInputs) -> Routing:
        return decide(self._scores(inputs), self.threshold)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"num_tasks": np.array([self.num_tasks]), "validation_scores": self.validation_scores}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.num_tasks = int(state["num_tasks"][0])
        self.validation_scores = state["validation_scores"]
        self.threshold = rejection_threshold(self.validation_scores, self.accept_rate)
