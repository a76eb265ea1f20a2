"""When a run evaluates, and which tasks: what keeps long streams (1,000 tasks) bounded.

Evaluating every seen task after every step costs T²/2 routed test sets and logs T² per-task metric
rows per score. ``eval.every=k`` evaluates after every k-th task (and always after the last), and
``eval.tasks=sample:K`` follows a fixed, seeded sample of K tasks (plus the task just learned) at
the evaluated steps in between. The last step always evaluates every task, so the final ACC is
exact; BWT and forgetting are then computed on what was evaluated (see :mod:`continual.metrics`).
The defaults (every step, all tasks) are the full accuracy matrix of short streams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from continual.checks import check_int
from continual.errors import ContinualError

SAMPLE = re.compile(r"sample:(\d+)")


@dataclass(frozen=True)
class EvalConfig:
    """``every``: evaluate after every k-th task and the last; ``tasks``: ``all`` or ``sample:K``; ``seed``
    draws the sample (the same sample for every run of the stream with this seed)."""

    every: int = 1
    tasks: str = "all"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.every, "eval.every", low=1)
        if not isinstance(self.tasks, str) or not (self.tasks == "all" or SAMPLE.fullmatch(self.tasks)):
            raise ContinualError(f"eval.tasks must be 'all' or 'sample:K' (K tasks), got {self.tasks!r}")
        if self.tasks != "all" and int(self.tasks.split(":")[1]) < 1:
            raise ContinualError(f"eval.tasks: a sample needs at least one task, got {self.tasks!r}")
        check_int(self.seed, "eval.seed")

    def sample(self, num_tasks: int) -> np.ndarray:
        """The followed tasks: all of them, or a seeded sample of K (sorted)."""
        if self.tasks == "all":
            return np.arange(num_tasks)
        size = min(int(self.tasks.split(":")[1]), num_tasks)
        return np.sort(np.random.default_rng([self.seed, num_tasks]).choice(num_tasks, size, replace=False))

    def columns(self, row: int, num_tasks: int) -> list[int]:
        """The tasks evaluated after learning task ``row`` (empty: a step that is not evaluated)."""
        if row == num_tasks - 1:
            return list(range(num_tasks))
        if (row + 1) % self.every:
            return []
        followed = self.sample(num_tasks)
        return sorted({*followed[followed <= row].tolist(), row})
