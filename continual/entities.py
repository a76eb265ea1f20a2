"""Entity-level scores of BIO tag sequences, as conlleval and seqeval compute them.

An entity is a maximal run that a ``B-<type>`` (or an ``I-<type>`` that continues nothing, read as a
begin: conlleval's and seqeval's default reading) starts and ``I-<type>`` of the same type continues.
A predicted entity counts only when its type *and* its span equal a gold entity's; micro F1 pools
every entity of every sentence.

Written here rather than taken from seqeval: the scorer works on the integer tag ids the heads emit
(tag 0 = O, 2m+1 = B of type m, 2m+2 = I of type m, see :func:`continual.streams.kinds.tokens.bio_tags`),
compares entities by stream-wide class id so that an input routed to another task's tagger is scored
against the right types, and is twenty lines that the tests pin to conlleval's numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

Entity = tuple[int, int, int]  # (first word, one past the last word, type or class id)


def entities(tags: Sequence[int] | np.ndarray) -> list[Entity]:
    """The entities of one sentence's tag ids (negative ids, "no tag", count as O)."""
    found: list[Entity] = []
    start, kind = -1, -1
    for i, tag in enumerate([int(t) for t in tags]):
        continues = tag > 0 and tag % 2 == 0 and start >= 0 and (tag - 2) // 2 == kind
        if continues:
            continue
        if start >= 0:
            found.append((start, i, kind))
        start, kind = (i, (tag - 1) // 2) if tag > 0 else (-1, -1)
    if start >= 0:
        found.append((start, len(tags), kind))
    return found


def valid_moves(tags: int) -> tuple[np.ndarray, np.ndarray]:
    """Which tag may follow which (``[previous, next]``) and which may start a sentence, in valid BIO: an
    ``I-<type>`` only continues a ``B-<type>`` or ``I-<type>`` of its own type."""
    ids = np.arange(tags)
    inside = (ids > 0) & (ids % 2 == 0)
    follows = ~inside[None, :] | (ids[:, None] == ids[None, :]) | (ids[:, None] == ids[None, :] - 1)
    return follows, ~inside


def bio_decode(scores: np.ndarray) -> np.ndarray:
    """The tag sequence of highest total score among the valid BIO ones (Viterbi over ``scores``, ``[words,
    tags]`` log-probabilities). Where the per-word argmax is valid it is the answer. Where it has an ``I-`` after
    an ``O`` or after another type, the best valid path decides whether that span begins earlier or not at all."""
    words, tags = scores.shape
    if words == 0:
        return np.zeros(0, dtype=np.int64)
    follows, starts = valid_moves(tags)
    moves = np.where(follows, 0.0, -np.inf)
    best = np.where(starts, scores[0], -np.inf)
    back = np.zeros((words, tags), dtype=np.int64)
    for i in range(1, words):
        paths = best[:, None] + moves  # [previous, next]
        back[i] = paths.argmax(0)
        best = paths.max(0) + scores[i]
    path = [int(best.argmax())]
    for i in range(words - 1, 0, -1):
        path.append(int(back[i, path[-1]]))
    return np.asarray(path[::-1], dtype=np.int64)


def as_classes(found: Iterable[Entity], class_ids: np.ndarray) -> set[Entity]:
    """Entities with their task-local type replaced by the stream-wide class id."""
    return {(start, stop, int(class_ids[kind])) for start, stop, kind in found}


def f1(tp: int, fp: int, fn: int) -> float:
    """2 tp / (2 tp + fp + fn); 0 when there is nothing to count (as seqeval)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


@dataclass
class EntityCounts:
    """True positives, false positives and false negatives, pooled and per class."""

    tp: Counter[int] = field(default_factory=Counter)
    fp: Counter[int] = field(default_factory=Counter)
    fn: Counter[int] = field(default_factory=Counter)

    def add(self, gold: set[Entity], predicted: set[Entity]) -> None:
        """One sentence: entities as (start, stop, class)."""
        for entity in gold & predicted:
            self.tp[entity[2]] += 1
        for entity in predicted - gold:
            self.fp[entity[2]] += 1
        for entity in gold - predicted:
            self.fn[entity[2]] += 1

    def add_tags(
        self, gold: np.ndarray, gold_classes: np.ndarray, predicted: np.ndarray | None, predicted_classes: np.ndarray
    ) -> None:
        """One sentence as tag ids: gold of a task with ``gold_classes``, predicted (None: nothing predicted)
        by a tagger with ``predicted_classes`` (each task's type index -> stream-wide class)."""
        found = set() if predicted is None else as_classes(entities(predicted), predicted_classes)
        self.add(as_classes(entities(gold), gold_classes), found)

    @property
    def micro_f1(self) -> float:
        return f1(sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values()))

    def by_class(self, names: dict[int, str]) -> dict[str, dict[str, float]]:
        """Per named class: precision, recall, F1 and support (gold entities), as conlleval lists them."""
        out = {}
        for cls, name in names.items():
            tp, fp, fn = self.tp[cls], self.fp[cls], self.fn[cls]
            out[name] = {
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "f1": f1(tp, fp, fn),
                "support": tp + fn,
            }
        return out
