"""Task kinds: what a type of task is, from how its texts reach a model to how its predictions are scored.

A :class:`Task` carries its kind. The run loop, the evaluation, the learners and the predictor ask
the kind instead of branching on its name; adding a kind is one new file beside ``sequence.py``
(the shortest complete example) and one entry in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch

from continual.errors import ContinualError
from continual.model.outputs import Classified

if TYPE_CHECKING:
    from continual.streams.task import Split, Task

UNKNOWN = -2  # an output not computed yet (-1 is "no task", an abstention)


class Encoded(NamedTuple):
    """Token ids of texts as a kind's head reads them; ``starts[i]``: each word's first sub-token (-1: cut off)
    for kinds that label words, else None."""

    tokens: list[list[int]]
    starts: list[np.ndarray] | None


@dataclass
class Outputs:
    """One head's outputs on one set of texts; ``labels == UNKNOWN`` marks texts not run yet, ``tags[i]`` a
    tagger's tag per word of text ``i``."""

    labels: np.ndarray
    certainty: np.ndarray
    tags: list[np.ndarray | None]

    @classmethod
    def empty(cls, n: int) -> Outputs:
        return cls(np.full(n, UNKNOWN, np.int64), np.zeros(n, np.float32), [None] * n)


class Score(NamedTuple):
    value: float  # accuracy, or entity micro F1
    by_type: dict[str, dict[str, float]]  # per label/type details the kind reports (empty: none)


class Tokenizer(Protocol):
    """What a kind needs of a backbone to turn texts into token ids (:class:`continual.model.backbone.Backbone`)."""

    max_tokens: int

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]: ...

    def tokenize_words(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[np.ndarray]]: ...


OutputsOf = Callable[[int, np.ndarray], Outputs]  # (task k, rows) -> task k's head outputs, filled at ``rows``


class TaskKind(Protocol):
    """A type of task. What a new kind must provide (and nothing else is asked of it):

    * ``name``: its ``type:`` in stream files, recorded in adapter files; ``metric``: the key its entries
      of R are logged under (``acc/<task>``); ``label_noun``: what its labels are called in log lines;
    * ``per_text``: True if its head labels a text from one pooled feature vector (learners with one
      head over all labels take only these, and such heads can be batched), False if it reads every
      token's state (``pooling`` is then what the backbone returns for it);
    * :meth:`check_spec`, :meth:`load`: its fields in a stream file, and its task built from the files;
    * :meth:`outputs`, :meth:`routing_classes`: the width of its head, the classes routers keep for it;
    * :meth:`encode`, :meth:`targets`, :meth:`loss`: texts to token ids, training targets, the loss;
    * :meth:`fill`, :meth:`answer`: a head's logits into :class:`Classified`, and into a JSON answer;
    * :meth:`score`: a test split scored from the outputs of the heads its texts were routed to.
    """

    name: str
    metric: str
    label_noun: str
    per_text: bool
    pooling: str | None

    def check_spec(self, raw: Mapping[str, Any], where: str) -> None: ...

    def load(self, spec: Any, base: Path, where: str, **build: Any) -> Task:
        """The task of stream-file entry ``spec`` (a :class:`continual.streams.spec.TaskSpec`); ``build`` holds
        the caps, seed and label space every kind applies."""
        ...

    def outputs(self, labels: Sequence[str]) -> int: ...

    def routing_classes(self, labels: Sequence[str]) -> int: ...

    def encode(self, tokenizer: Tokenizer, texts: Sequence[str], max_length: int, what: str) -> Encoded: ...

    def targets(self, split: Split, encoded: Encoded) -> list[Any]:
        """One training target per text of ``split`` (as encoded)."""
        ...

    def target_tensor(self, targets: Sequence[Any], device: torch.device) -> torch.Tensor:
        """``targets`` (of :meth:`targets`) as the loss reads them: ``[n]`` labels, or ``[n, tokens]`` tags
        (``IGNORED`` where the loss skips a position)."""
        ...

    def loss(self, logits: torch.Tensor, targets: Sequence[Any]) -> torch.Tensor: ...

    def fill(self, out: Classified, rows: slice, logits: torch.Tensor, mask: torch.Tensor) -> None: ...

    def answer(self, text: str, starts: np.ndarray | None, row: Classified, labels: Sequence[str]) -> dict[str, Any]:
        """Text ``text``'s answer from its row of :class:`Classified` (``row``: tensors of one example)."""
        ...

    def score(
        self,
        task: Task,
        split: Split,
        own: int,
        routes: np.ndarray,
        outputs: OutputsOf,
        classes: Mapping[int, np.ndarray],
    ) -> Score:
        """``split`` of ``task`` (stream task ``own``) scored with each text labelled by the head of task
        ``routes[i]`` (-1: none);
        ``classes[k]`` maps task k's labels to stream-wide classes (shared label spaces count across tasks)."""
        ...


def kind_named(name: Any, where: str) -> TaskKind:
    """The kind called ``name`` (one line naming ``where`` if there is none)."""
    if name not in KINDS:
        raise ContinualError(f"{where}: field 'type' must be one of {list(KINDS)}, got {name!r}")
    return KINDS[name]


from continual.streams.kinds.sequence import SEQUENCE  # noqa: E402  (the kinds read the protocol above)
from continual.streams.kinds.tokens import TOKENS  # noqa: E402

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (SEQUENCE, TOKENS)}

__all__ = ["KINDS", "SEQUENCE", "TOKENS", "Encoded", "Outputs", "Score", "TaskKind", "kind_named"]
