"""The router protocol: per-example task decisions over a set of inputs.

A router sees a :class:`RouterInputs`: lazy views of N texts (frozen-backbone features, the
certainty of any learned task's head, their labels when known) that the caller computes on first
use and may cache. It answers with a :class:`Routing`: a task index per input (``-1`` = abstain:
the input belongs to no learned task) and a score per (input, task), higher = more likely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from continual.errors import ContinualError
from continual.streams import Task

ABSTAIN = -1


class RouterInputs:
    """What a router may look at for ``size`` inputs; each view is computed once, on first use.

    ``features(pooling, layers)`` are backbone features *without* adapters, ``[size, dim]``;
    ``certainty(k)`` is task ``k``'s head certainty (1 - normalised entropy) per input;
    ``head_scores()`` is, for a learner with one head over all labels, each task's best label score
    per input ``[size, tasks]``; ``task_ids`` is the true task of each input, known only in
    evaluation; ``labels`` the label index of each input within its task, known for the training and
    validation inputs a router learns from.
    """

    def __init__(
        self,
        size: int,
        features: Callable[[str, tuple[int, ...] | None], np.ndarray],
        certainty: Callable[[int], np.ndarray],
        task_ids: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        head_scores: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.size = size
        self.task_ids = task_ids
        self.labels = labels
        self._head_scores_fn = head_scores
        self._features_fn, self._certainty_fn = features, certainty
        self._features: dict[tuple[str, tuple[int, ...] | None], np.ndarray] = {}
        self._certainty: dict[int, np.ndarray] = {}
        self._head_scores: np.ndarray | None = None

    def features(self, pooling: str = "mean", layers: Sequence[int] | None = (-1,)) -> np.ndarray:
        key = (pooling, None if layers is None else tuple(layers))
        if key not in self._features:
            self._features[key] = self._features_fn(*key)
        return self._features[key]

    def certainty(self, k: int) -> np.ndarray:
        if k not in self._certainty:
            self._certainty[k] = self._certainty_fn(k)
        return self._certainty[k]

    def head_scores(self) -> np.ndarray:
        if self._head_scores_fn is None:
            raise ValueError("these inputs come from a learner with one head per task: it has no single head to read")
        if self._head_scores is None:
            self._head_scores = self._head_scores_fn()
        return self._head_scores


@dataclass(frozen=True)
class Routing:
    """``tasks[n]``: the chosen task of input n, or -1; ``scores[n, k]``: the router's score of task k;
    ``support[n]``: how in-scope input n looks, what a rejection threshold is compared with (None: its
    best score)."""

    tasks: np.ndarray
    scores: np.ndarray | None = None
    support: np.ndarray | None = None

    def in_scope(self) -> np.ndarray | None:
        """``support``, else the best score per input; None for a router that scores nothing (the oracle)."""
        if self.support is not None:
            return self.support
        return None if self.scores is None else self.scores.max(1)


class Reads(Enum):
    """What a router looks at to choose a task: which learners it fits, whether it can route new text."""

    TASK_IDS = "the true task of each input"  # the oracle: task-incremental evaluation only
    FEATURES = "frozen backbone features"  # per-task learners; learns from each task's data
    TASK_HEADS = "every task's head"  # per-task learners; runs each task's adapter and head
    ONE_HEAD = "the learner's one head over all labels seen so far"  # single-head learners: class-IL argmax


class Router(Protocol):
    """Maps each input to a learned task (whose adapter and head then label it), or to none.

    What a new router must provide:

    * ``reads``: :class:`Reads`, what it looks at. Every router but the oracle chooses on its own and
      can serve ``continual predict`` on new text; ``ONE_HEAD`` routers serve learners with one head
      over all labels, the others learners with one module and head per task.
    * ``accept_rate``: None if it never abstains; else the share of in-scope validation inputs it
      accepts (its rejection threshold is calibrated on them; tasks then need validation data, and
      a stream's out-of-scope texts are scored).
    * :meth:`add_task`: fold in the task just learned, from its training and validation inputs.
    * :meth:`route`: a task per input (or -1) and a score per task.
    * :meth:`state_dict`, :meth:`load_state_dict`: everything :meth:`route` needs, as named arrays.
    """

    reads: Reads
    accept_rate: float | None

    def add_task(self, index: int, task: Task, train: RouterInputs, validation: RouterInputs) -> None:
        """Update the router after task ``index`` was learned; ``train``/``validation`` view that task's splits."""
        ...

    def route(self, inputs: RouterInputs) -> Routing: ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything :meth:`route` needs, as named arrays (saved as safetensors next to the adapters)."""
        ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


def check_accept_rate(accept_rate: float | None, where: str) -> None:
    if accept_rate is not None and (isinstance(accept_rate, bool) or not 0.0 < float(accept_rate) <= 1.0):
        raise ContinualError(
            f"{where}.accept_rate must be in (0, 1] (the share of in-scope validation inputs "
            f"to accept) or null to never abstain, got {accept_rate!r}"
        )


def rejection_threshold(validation_scores: np.ndarray, accept_rate: float | None) -> float:
    """The score below which an input is rejected: ``accept_rate`` of in-scope validation inputs pass it."""
    if accept_rate is None or len(validation_scores) == 0:
        return -np.inf
    return float(np.quantile(validation_scores, 1.0 - accept_rate, method="lower"))


def decide(scores: np.ndarray, threshold: float, support: np.ndarray | None = None) -> Routing:
    """Each input to its best-scoring task; abstain where ``support`` (default: that best score) < ``threshold``."""
    tasks = scores.argmax(1)
    support = scores.max(1) if support is None else support
    tasks[support < threshold] = ABSTAIN
    return Routing(tasks.astype(np.int64), scores, support)


def restrict(routing: Routing, allowed: np.ndarray) -> np.ndarray:
    """Routes chosen among the ``allowed`` tasks only (per stream task; a text evaluated or asked for as a
    token task goes to a token task): each input's best allowed score, abstentions kept."""
    if routing.scores is None:  # a router that scores nothing (the oracle) already chose the asked-for task
        return routing.tasks
    allowed = allowed[: routing.scores.shape[1]]
    if allowed.all():
        return routing.tasks
    tasks = np.where(allowed[None, :], routing.scores, -np.inf).argmax(1).astype(np.int64)
    tasks[routing.tasks < 0] = ABSTAIN
    return tasks


class StatelessRouter:
    """What a router that learns nothing from the data keeps: how many tasks it has seen (the oracle, the head)."""

    accept_rate: float | None = None

    def __init__(self) -> None:
        self.num_tasks = 0

    def add_task(
        self, index: int, task: Task, train: RouterInputs | None = None, validation: RouterInputs | None = None
    ) -> None:
        self.num_tasks = index + 1

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"num_tasks": np.array([self.num_tasks])}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.num_tasks = int(state["num_tasks"][0])
