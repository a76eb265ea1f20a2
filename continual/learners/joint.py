"""Joint multi-task training: every task of the stream at once, the usual upper bound of continual learning.

The shared weights (one adapter, or the whole backbone) and one head per task are trained on the
shuffled union of all tasks' training data; each example goes through its own task's head. There is
no task stream: its schedule is ``ALL_AT_END``, so :func:`continual.experiment.run_stream` hands it
every task at the last step and fills only the final row of the accuracy matrix: average accuracy
is defined, BWT and forgetting are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from continual.adapters import AdapterKind
from continual.backbone import Backbone
from continual.errors import ContinualError
from continual.learners.base import LearnReport, LossCallback, Schedule, oracle_accuracy
from continual.learners.sequential import SequentialConfig, SequentialLearner
from continual.streams import Task
from continual.training import TrainerConfig

JOINT_LIMIT = "trains all tasks at once and has no task stream to route"


@dataclass(frozen=True)
class JointConfig(SequentialConfig):
    """Options of :class:`JointLearner` (``learner=joint``): those of :class:`SequentialConfig`, no memory or EWC."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory is not None or self.ewc is not None:
            raise ContinualError("learner=joint sees every task at once: it takes no memory and no ewc options")

    @property
    def router_limit(self) -> str | None:
        return JOINT_LIMIT

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> JointLearner:
        return JointLearner(
            backbone,
            adapter,
            trainer,
            base=self.base,
            backbone_lr=self.backbone_lr,
            head_dropout=self.head_dropout,
            seed=seed,
            progress=self.progress,
        )


class JointLearner(SequentialLearner):
    """Multi-task training on the union of all tasks (per-task heads); evaluated once, after it."""

    schedule = Schedule.ALL_AT_END

    @property
    def router_limit(self) -> str | None:
        return JOINT_LIMIT

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """Train on every task at once; the report's ``val_acc`` pools all validation examples."""
        if self.tasks:
            raise ContinualError("learner=joint has already been trained; it trains once, on all tasks")
        indexed = [(self._add_head(task), task) for task in tasks]
        pool = self._examples(indexed)
        fitted, trainable, _ = self._train("joint", pool, set(range(len(tasks))), on_loss)
        sizes = np.array([len(t.validation) for t in tasks])
        accuracies = [oracle_accuracy(self, k, t.validation.texts, t.validation.labels) for k, t in indexed]
        val_acc = float(np.dot(np.nan_to_num(accuracies), sizes) / sizes.sum()) if sizes.sum() else float("nan")
        return LearnReport(
            "joint",
            fitted.steps,
            len(pool.tokens) * self.trainer.epochs,
            fitted.seconds,
            fitted.final_loss,
            val_acc,
            trainable,
        )
