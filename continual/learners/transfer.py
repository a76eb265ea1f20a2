"""How a new task's adapter may start from, or draw on, the adapters learned before it.

Every strategy keeps the isolation of :class:`continual.learners.AdapterPerTask`: earlier adapters
stay frozen, so a task's predictions with its id given never change once it is learned.

* ``none``: a fresh adapter (the reference for forward transfer, FWT_j = R[j, j] - R_none[j, j]);
* ``similar``: the new adapter starts as a copy of the earlier adapter whose task is most similar, by
  cosine similarity of task centroids (the mean frozen, mean-pooled backbone feature of a task's
  training texts: the statistic prototype routers keep per class, pooled per task);
* ``fusion``: AdapterFusion (Pfeiffer et al. 2021): the new task's adapter output composes its own
  adapter's and frozen earlier adapters' outputs, per token by attention (``learner.fusion.kind=attention``)
  or by one softmax weight per site (``static``), over every earlier adapter or the ``top:M`` most similar
  tasks' (``learner.fusion.sources``); its own adapter starts fresh or, with ``learner.fusion.init=similar``,
  as ``similar`` starts it; see :mod:`continual.adapters.fusion`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from continual.adapters import AdapterBank
from continual.adapters.fusion import FusionConfig
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
    """``none``: every adapter starts fresh."""

    name = "none"
    fuses = False

    def start(self, bank: AdapterBank, k: int, task: Task, tasks: Sequence[Task]) -> None:
        pass

    def restored(self, k: int, task: Task, metadata: Mapping[str, str]) -> None:
        pass

    def metadata(self, k: int) -> dict[str, str]:
        return {"initialised_from": ""}


class Centroids:
    """Each task's centroid (mean frozen feature of its training texts), and the earlier tasks most like one."""

    def __init__(self, centroid: Centroid) -> None:
        self.centroid = centroid
        self.of: list[np.ndarray] = []  # per task

    def add(self, task: Task) -> None:
        if len(task.train.texts):  # a task restored for prediction has no texts; only later tasks compare
            self.of.append(self.centroid(task.train.texts))

    def nearest(self, k: int, m: int) -> list[tuple[int, float]]:
        """The ``m`` earlier tasks most similar to task ``k`` (cosine), most similar first."""
        mine = self.of[k]
        cosine = [float(c @ mine / (np.linalg.norm(c) * np.linalg.norm(mine) + 1e-12)) for c in self.of[:k]]
        order = np.argsort(-np.array(cosine), kind="stable")  # ties: the earlier task first
        return [(int(j), cosine[j]) for j in order[:m]]


def copy_nearest(
    centroids: Centroids,
    bank: AdapterBank,
    k: int,
    task: Task,
    tasks: Sequence[Task],
    ensure: Callable[[list[int]], None],
) -> int:
    """Start task ``k``'s (``task``'s) adapter as a copy of the most similar earlier task's; that task's index."""
    ((source, cosine),) = centroids.nearest(k, 1)
    ensure([source])
    bank.adapters[k].load_state_dict(bank.adapters[source].state_dict())
    log.info("task %s: adapter initialised from task %s (cosine %.3f)", task.name, tasks[source].name, cosine)
    return source


class StartFromSimilar:
    """``similar``: copy the adapter of the most similar earlier task (cosine of task centroids)."""

    name = "similar"
    fuses = False

    def __init__(self, centroid: Centroid, ensure: Callable[[list[int]], None]) -> None:
        self.centroids, self.ensure = Centroids(centroid), ensure  # ensure: the adapters to copy are in memory
        self.sources: dict[int, int] = {}  # task -> the earlier task its adapter was copied from

    def start(self, bank: AdapterBank, k: int, task: Task, tasks: Sequence[Task]) -> None:
        self.centroids.add(task)
        if k == 0:
            return
        self.sources[k] = copy_nearest(self.centroids, bank, k, task, tasks, self.ensure)

    def restored(self, k: int, task: Task, metadata: Mapping[str, str]) -> None:
        self.centroids.add(task)
        if metadata.get("initialised_from"):
            self.sources[k] = int(metadata["initialised_from"])

    def metadata(self, k: int) -> dict[str, str]:
        return {"initialised_from": str(self.sources.get(k, ""))}


class FuseEarlier:
    """``fusion``: task ``k`` (after the first) composes its adapter's output with earlier adapters' (all, or
    the ``top:M`` most similar tasks'), through fusion weights trained with it."""

    name = "fusion"
    fuses = True

    def __init__(self, config: FusionConfig, centroid: Centroid, ensure: Callable[[list[int]], None]) -> None:
        self.config, self.ensure = config, ensure
        compares = config.top is not None or config.init == "similar"  # top:M and init=similar compare tasks
        self.centroids = Centroids(centroid) if compares else None
        # fused task -> {source task: its mean weight over the task's validation tokens and every site}
        self.attention: dict[int, dict[int, float]] = {}
        self.copied: dict[int, int] = {}  # with init=similar: fused task -> the task its own adapter copied

    def start(self, bank: AdapterBank, k: int, task: Task, tasks: Sequence[Task]) -> None:
        if self.centroids is not None:
            self.centroids.add(task)
        if k == 0:
            return
        if self.centroids is None or self.config.top is None:
            sources = list(range(k))
        else:
            sources = sorted(j for j, _ in self.centroids.nearest(k, self.config.top))
        if self.centroids is not None and self.config.init == "similar":
            self.copied[k] = copy_nearest(self.centroids, bank, k, task, tasks, self.ensure)
        self.ensure(sources)
        bank.fuse(k, self.config.kind, sources)
        names = [tasks[j].name for j in sources]
        log.info("task %s: fuses its adapter with %s (%s)", task.name, names, self.config.kind)

    def restored(self, k: int, task: Task, metadata: Mapping[str, str]) -> None:
        if self.centroids is not None:
            self.centroids.add(task)
        if metadata.get("attention"):
            self.attention[k] = {int(j): w for j, w in json.loads(metadata["attention"]).items()}
        if metadata.get("initialised_from"):
            self.copied[k] = int(metadata["initialised_from"])

    def metadata(self, k: int) -> dict[str, str]:
        attention = json.dumps({str(j): round(w, 6) for j, w in self.attention.get(k, {}).items()})
        return {"initialised_from": str(self.copied.get(k, "")), "fusion": self.config.kind, "attention": attention}


TRANSFERS = ("none", "similar", "fusion")


def transfer_named(
    name: str, fusion: FusionConfig, centroid: Centroid, ensure: Callable[[list[int]], None]
) -> Transfer:
    """The strategy ``learner.transfer`` names (checked by the learner's config)."""
    if name == "similar":
        return StartFromSimilar(centroid, ensure)
    if name == "fusion":
        return FuseEarlier(fusion, centroid, ensure)
    return NoTransfer()
