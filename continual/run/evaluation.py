"""Routed evaluation that fills the accuracy matrix without recomputing what cannot have changed.

An example counts as correct only if the router sends it to an adapter whose head then gives it its
own class: its own task's adapter and label, or, where tasks share a label space, any task's adapter
that gives the same label. Every cell also gets the oracle-routed accuracy of the same adapters, so
the cost of routing is visible task by task.

Adapter outputs are remembered per (test set, adapter) together with the learner's fingerprint of
that adapter (a digest of every tensor its outputs depend on). A frozen, isolated adapter keeps its
fingerprint, so its outputs on a fixed test set are computed once, and filling R costs O(T·N)
adapter passes instead of O(T²·N), for the predictions and for the entropy router's certainties
alike. Frozen features for feature routers are remembered per test set under the backbone's
fingerprint. A learner that changes old parameters changes the fingerprint, and those cells are
recomputed in full. Routing itself is re-run at every evaluation, from the remembered features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import numpy as np
import torch

from continual.learners.base import (
    Fingerprints,
    Head,
    Learner,
    SingleHead,
    encode,
    padded_batches,
    run_head,
    tokenize,
)
from continual.routers.base import Router, RouterInputs, restrict
from continual.streams import Split, Task
from continual.streams.kinds import UNKNOWN, Encoded, Outputs
from continual.streams.task import class_index

OUT_OF_SCOPE = "out_of_scope"
SetKey = int | str  # a task index (its test split) or OUT_OF_SCOPE


@dataclass
class _Memo:
    """One head's outputs on one test set, and the fingerprint of what they were computed with."""

    fingerprint: str
    outputs: Outputs


@dataclass(frozen=True)
class TaskEval:
    """Routed accuracy (right task *and* right label), router accuracy, and oracle-routed accuracy.

    For a token task both scores are entity-level micro F1 (routed: entities from the tagger the router
    chose), and ``by_type`` holds the routed per-type precision, recall, F1 and support.
    """

    accuracy: float
    router_accuracy: float
    oracle_accuracy: float
    examples: int
    computed: int  # adapter passes actually run (the rest came from the memo)
    routes: np.ndarray  # routed task per example (-1 = abstained)
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)


def features_of(
    learner: Learner, tokens: Sequence[Sequence[int]], pooling: str, layers: tuple[int, ...] | None
) -> np.ndarray:
    """Frozen, adapter-free pooled features of tokenized texts, ``[n, dim]`` float32."""
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for idx, ids, mask in padded_batches(learner, tokens):
        rows.append((idx, learner.features(ids, mask, pooling, layers).cpu().numpy()))
    if not rows:
        return np.zeros((0, 0), np.float32)
    out = np.empty((len(tokens), rows[0][1].shape[1]), np.float32)
    for idx, values in rows:
        out[idx] = values
    return out


def encode_texts(learner: Learner, texts: Sequence[str], labels: np.ndarray | None = None) -> RouterInputs:
    """:class:`RouterInputs` over raw texts (no memo): what routers see when learning a task or predicting.

    Texts are tokenized on first use: a router that looks at nothing (the oracle) costs nothing.
    """
    tokens: list[list[int]] = []

    def tokenized() -> list[list[int]]:
        if len(tokens) != len(texts):
            tokens[:] = tokenize(learner, texts)
        return tokens

    def certainty(k: int) -> np.ndarray:
        outputs = Outputs.empty(len(texts))
        run_head(learner, Encoded(tokenized(), None), k, outputs, np.arange(len(texts)))
        return outputs.certainty

    return RouterInputs(
        len(texts),
        lambda pooling, layers: features_of(learner, tokenized(), pooling, layers),
        certainty,
        labels=labels,
        head_scores=(lambda: head_scores_of(learner, tokenized())) if learner.head is Head.ALL_SEEN else None,
    )


def head_scores_of(learner: Learner, tokens: Sequence[Sequence[int]]) -> np.ndarray:
    """``[n, tasks]``: each task's best label score from a single-head learner's one head."""
    single = cast(SingleHead, learner)  # Head.ALL_SEEN learners provide task_scores (see SingleHead)
    rows: list[tuple[np.ndarray, np.ndarray]] = [
        (idx, single.task_scores(ids, mask).float().cpu().numpy()) for idx, ids, mask in padded_batches(learner, tokens)
    ]
    out = np.zeros((len(tokens), rows[0][1].shape[1] if rows else 0), np.float32)
    for idx, values in rows:
        out[idx] = values
    return out


def split_inputs(learner: Learner, split: Split) -> RouterInputs:
    """:class:`RouterInputs` over a labelled split (a task's training or validation texts)."""
    return encode_texts(learner, split.texts, split.labels)


class Evaluator:
    """Evaluates the test splits of ``tasks`` (and optional ``out_of_scope`` texts) through ``router``."""

    def __init__(
        self,
        learner: Learner,
        router: Router,
        tasks: Sequence[Task],
        memoise: bool = True,
        out_of_scope: Sequence[str] = (),
    ) -> None:
        self.learner = learner
        self.router = router
        self.tasks = tasks
        self.class_ids = dict(enumerate(class_index(tasks)))  # labels by class: shared label spaces count across tasks
        self.kinds = np.array([t.kind.name for t in tasks])
        self.memoise = memoise
        self.sets: dict[SetKey, Encoded] = {  # test texts as their task's kind reads them
            j: encode(learner, t.kind, t.test.texts, f"task '{t.name}' test") for j, t in enumerate(tasks)
        }
        if len(out_of_scope):
            self.sets[OUT_OF_SCOPE] = Encoded(tokenize(learner, out_of_scope), None)
        self._outputs: dict[tuple[SetKey, int], _Memo] = {}
        self._features: dict[tuple[SetKey, str, tuple[int, ...] | None], tuple[str, np.ndarray]] = {}
        self._head: dict[SetKey, tuple[list[str], np.ndarray]] = {}
        self._fingerprints: Fingerprints | None = None
        self.computed = 0

    @property
    def has_out_of_scope(self) -> bool:
        return OUT_OF_SCOPE in self.sets

    def new_step(self) -> None:
        """Call after the learner changed (a task was learned): fingerprints are taken afresh."""
        self._fingerprints = None

    def _fingerprint(self) -> Fingerprints:
        if self._fingerprints is None:  # one call per step: the learner hashes shared weights once
            self._fingerprints = self.learner.fingerprints()
        return self._fingerprints

    def _adapter(self, key: SetKey, k: int, needed: np.ndarray) -> Outputs:
        """Task ``k``'s outputs on set ``key``, computed where ``needed`` and not yet known."""
        encoded = self.sets[key]
        fingerprint = self._fingerprint().tasks[k]
        memo = self._outputs.get((key, k))
        if memo is None or memo.fingerprint != fingerprint:
            memo = self._outputs[(key, k)] = _Memo(fingerprint, Outputs.empty(len(encoded.tokens)))
        todo = np.flatnonzero(needed & (memo.outputs.labels == UNKNOWN))
        run_head(self.learner, encoded, k, memo.outputs, todo)
        self.computed += len(todo)
        return memo.outputs

    def _frozen_features(self, key: SetKey, pooling: str, layers: tuple[int, ...] | None) -> np.ndarray:
        fingerprint = self._fingerprint().backbone
        cached = self._features.get((key, pooling, layers))
        if cached is None or cached[0] != fingerprint:
            cached = self._features[(key, pooling, layers)] = (
                fingerprint,
                features_of(self.learner, self.sets[key].tokens, pooling, layers),
            )
        return cached[1]

    def _head_scores(self, key: SetKey) -> np.ndarray:
        """A single-head learner's task scores on set ``key``, while every task's fingerprint holds."""
        fingerprints = self._fingerprint().tasks
        cached = self._head.get(key)
        if cached is None or cached[0] != fingerprints:
            cached = self._head[key] = (fingerprints, head_scores_of(self.learner, self.sets[key].tokens))
        return cached[1]

    def inputs(self, key: SetKey) -> RouterInputs:
        n = len(self.sets[key].tokens)
        truth = np.full(n, key, np.int64) if isinstance(key, int) else None
        single = self.learner.head is Head.ALL_SEEN
        return RouterInputs(
            n,
            lambda pooling, layers: self._frozen_features(key, pooling, layers),
            lambda k: self._adapter(key, k, np.ones(n, bool)).certainty,
            truth,
            head_scores=(lambda: self._head_scores(key)) if single else None,
        )

    @torch.no_grad()
    def evaluate(self, j: int) -> TaskEval:
        """Accuracy of task ``j``'s test split as things stand now."""
        if not self.memoise:  # the plain path: nothing survives from one evaluation to the next
            self._outputs.clear()
            self._features.clear()
            self._head.clear()
            self._fingerprints = None
        before = self.computed
        task, n = self.tasks[j], len(self.sets[j].tokens)
        routes = restrict(self.router.route(self.inputs(j)), self.kinds == self.kinds[j])
        routed = task.kind.score(task, task.test, j, routes, partial(self._adapter, j), self.class_ids)
        oracle = task.kind.score(task, task.test, j, np.full(n, j), partial(self._adapter, j), self.class_ids)
        return TaskEval(
            routed.value,
            float(np.mean(routes == j)),
            oracle.value,
            n,
            self.computed - before,
            routes,
            routed.by_type,
        )

    @torch.no_grad()
    def rejection_rate(self) -> float:
        """Share of the out-of-scope texts that the router rejects (routes to no task): OOS recall."""
        return float(np.mean(self.router.route(self.inputs(OUT_OF_SCOPE)).tasks < 0))
