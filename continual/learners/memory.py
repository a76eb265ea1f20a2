"""A bounded episodic memory of past training examples for experience replay.

Experience replay (ER; Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning")
keeps a few training examples of earlier tasks and mixes them into the batches of the new task.
The memory stores token ids, the label and the task index of each example, never more than
``size`` of them. Two ways to choose what stays:

* ``reservoir``: reservoir sampling (Vitter 1985, Algorithm R) over every training example seen so
  far, so each one is kept with the same probability ``size / seen``;
* ``per_class``: the same share of the memory for every class (task, label) seen so far; when new
  classes arrive, older classes give up a random part of their slots.

Each update draws from a generator seeded by (run seed, task index), so a resumed run that restores
the memory with :meth:`EpisodicMemory.load_state_dict` fills it exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from continual.checks import check_int
from continual.errors import ContinualError

SAMPLINGS = ("reservoir", "per_class")


@dataclass(frozen=True)
class MemoryConfig:
    """``size`` examples at most, chosen by ``sampling``; ``batch_size`` replayed per step (None = the trainer's)."""

    size: int = 500
    sampling: str = "reservoir"
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_int(self.size, "learner.memory.size", low=1)
        if self.sampling not in SAMPLINGS:
            raise ContinualError(f"learner.memory.sampling must be one of {list(SAMPLINGS)}, got {self.sampling!r}")
        check_int(self.batch_size, "learner.memory.batch_size", low=1, optional=True)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> MemoryConfig:
        """From the ``learner.memory`` config node; unknown keys are one error line."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ContinualError(f"learner.memory: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(options))


class EpisodicMemory:
    """Stored examples as parallel lists: token ids, label (within its task), task index."""

    def __init__(self, config: MemoryConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.tokens: list[list[int]] = []
        self.labels = np.zeros(0, np.int64)
        self.tasks = np.zeros(0, np.int64)
        self.seen = 0  # training examples offered so far (reservoir sampling needs the count)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, task: int, tokens: Sequence[Sequence[int]], labels: np.ndarray) -> None:
        """Offer every training example of ``task`` (call once per task, after learning it)."""
        rng = np.random.default_rng([self.seed, task, 1])
        labels = np.asarray(labels, np.int64)
        if self.config.sampling == "reservoir":
            self._reservoir(task, tokens, labels, rng)
        else:
            self._per_class(task, tokens, labels, rng)

    def _reservoir(
        self, task: int, tokens: Sequence[Sequence[int]], labels: np.ndarray, rng: np.random.Generator
    ) -> None:
        size = self.config.size
        kept = list(zip(self.tokens, self.labels.tolist(), self.tasks.tolist()))
        for ids, label in zip(tokens, labels.tolist()):
            self.seen += 1
            if len(kept) < size:
                kept.append((list(ids), label, task))
                continue
            slot = int(rng.integers(self.seen))  # keep the newcomer with probability size / seen
            if slot < size:
                kept[slot] = (list(ids), label, task)
        self._set(kept)

    def _per_class(
        self, task: int, tokens: Sequence[Sequence[int]], labels: np.ndarray, rng: np.random.Generator
    ) -> None:
        self.seen += len(labels)
        old = sorted(set(zip(self.tasks.tolist(), self.labels.tolist())))
        classes = old + [(task, label) for label in sorted(set(labels.tolist()))]
        base, extra = divmod(self.config.size, len(classes))
        kept: list[tuple[list[int], int, int]] = []
        for n, (owner, label) in enumerate(classes):
            quota = base + (n < extra)  # quotas differ by at most one and sum to size
            if owner != task:  # an older class: a random part of what it holds stays
                mine = np.flatnonzero((self.tasks == owner) & (self.labels == label))
                source = [self.tokens[i] for i in mine.tolist()]
            else:
                source = [list(tokens[i]) for i in np.flatnonzero(labels == label).tolist()]
            keep = np.sort(rng.permutation(len(source))[:quota])
            kept += [(source[i], label, owner) for i in keep.tolist()]
        self._set(kept)

    def _set(self, kept: Sequence[tuple[list[int], int, int]]) -> None:
        """Replace the contents by (token ids, label, task) triples."""
        self.tokens = [ids for ids, _, _ in kept]
        self.labels = np.array([label for _, label, _ in kept], np.int64)
        self.tasks = np.array([owner for _, _, owner in kept], np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``min(n, len(self))`` distinct stored examples, drawn at random."""
        return rng.choice(len(self), size=min(n, len(self)), replace=False) if len(self) else np.zeros(0, np.int64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Ragged token ids as one flat tensor plus lengths; labels, tasks and the ``seen`` count."""
        flat = [t for ids in self.tokens for t in ids]
        return {
            "tokens": torch.tensor(flat, dtype=torch.long),
            "lengths": torch.tensor([len(t) for t in self.tokens], dtype=torch.long),
            "labels": torch.from_numpy(self.labels.copy()),
            "tasks": torch.from_numpy(self.tasks.copy()),
            "seen": torch.tensor([self.seen], dtype=torch.long),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        flat, lengths = state["tokens"].tolist(), state["lengths"].tolist()
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
        self._set(
            list(
                zip(
                    [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
                    state["labels"].tolist(),
                    state["tasks"].tolist(),
                )
            )
        )
        self.seen = int(state["seen"][0])
