"""How a new task's adapter may start from, or draw on, the adapters learned before it.

Every strategy keeps the isolation of :class:`continual.learners.AdapterPerTask`: earlier adapters
stay frozen, so a task's predictions with its id given never change once it is learned.

* ``none``: a fresh adapter (the reference for forward transfer, FWT_j = R[j, j] - R_none[j, j]);
* ``similar``: the new adapter starts as a copy of the earlier adapter whose task is most similar, by
  cosine similarity of task centroids (the mean frozen, mean-pooled backbone feature of a task's
  training texts: the statistic prototype routers keep per class, pooled per task);
* ``fusion``: AdapterFusion-style (Pfeiffer et al. 2021): the new task's adapter output is its own
  update plus the frozen earlier adapters' updates, mixed per site by learned softmax weights
  (static per site, not the paper's input-dependent attention), trained with the new adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from continual.adapters import AdapterBank
from continual.streams import Task

log = logging.getLogger(__name__)

Centroid = Callable[[Sequence[str]], np.ndarray]  # texts -> their mean frozen feature


class Transfer(Protocol):
    """A transfer strategy. What a new one must provide:

    * ``name``: its ``learner.transfer`` value, recorded in adapter files (which load only into it);
    * ``fuses``: whether a task's adapter mixes in every earlier adapter (the bank then runs them too);
    * :meth:`start`: prepare task ``k``'s fresh adapter before it trains (e.g. copy an earlier one);
    * :meth:`restored`: task ``k`` was loaded from its file (with that file's ``metadata``);
    * :meth:`metadata`: what task ``k``'s file records of the strategy.
    """

    name: str
    fuses: bool

    def start(self, bank: AdapterBank, k: int, task: Task, tasks: Sequence[Task]) -> None: ...

    def restored(self, k: int, task: Task, metadata: Mapping[str, str]) -> None: ...

    def metadata(self, k: int) -> dict[str, str]: ...


class NoTransfer:
    """``none``: every adapter starts fresh. ``fusion`` differs only in ``fuses``: the bank does the mixing."""

    def __init__(self, name: str = "none", fuses: bool = False) -> None:
        self.name, self.fuses = name, fuses

    def start(self, bank: AdapterBank, k: int, task: Task, tasks: Sequence[Task]) -> None:
        pass

    def restored(self, k: int, task: Task, metadata: Mapping[str, str]) -> None:
        pass

    def metadata(self, k: int) -> dict[str, str]:
        return {"initialised_from": ""}


class StartFromSimilar:
    """``similar``: copy the adapter of the most similar earlier task (cosine of task centroids)."""

    name = "similar"
    fuses = False

    def __init__(self, centroid: Centroid, ensure: Callable[[list[int]], None]) -> None:
        self.centroid, self.ensure = centroid, ensure  # ensure: the adapters to copy from are in memory
        self.centroids: list[np.ndarray] = []  # per task
        self.sources: dict[int, int] = {}  # task -> the earlier task its adapter was copied from

    def start(self, bank: AdapterBank, k: int, task: Task, tasks: Sequence[Task]) -> None:
        self.centroids.append(self.centroid(task.train.texts))
        if k == 0:
            return
        mine = self.centroids[k]
        cosine = [float(c @ mine / (np.linalg.norm(c) * np.linalg.norm(mine) + 1e-12)) for c in self.centroids[:k]]
        source = int(np.argmax(cosine))
        self.ensure([source])
        bank.adapters[k].load_state_dict(bank.adapters[source].state_dict())
        self.sources[k] = source
        log.info(
            "task %s: adapter initialised from task %s (cosine %.3f)", task.name, tasks[source].name, cosine[source]
        )

    def restored(self, k: int, task: Task, metadata: Mapping[str, str]) -> None:
        if len(task.train.texts):  # resuming: later tasks compare with it
            self.centroids.append(self.centroid(task.train.texts))
        if metadata.get("initialised_from"):
            self.sources[k] = int(metadata["initialised_from"])

    def metadata(self, k: int) -> dict[str, str]:
        return {"initialised_from": str(self.sources.get(k, ""))}


TRANSFERS = ("none", "similar", "fusion")


def transfer_named(name: str, centroid: Centroid, ensure: Callable[[list[int]], None]) -> Transfer:
    """The strategy ``learner.transfer`` names (checked by the learner's config)."""
    if name == "similar":
        return StartFromSimilar(centroid, ensure)
    return NoTransfer(name, fuses=name == "fusion")
