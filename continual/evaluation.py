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
from typing import cast

import numpy as np
import torch

from continual.entities import EntityCounts
from continual.learners.base import (
    Fingerprints,
    Head,
    Learner,
    SingleHead,
    padded_batches,
    tokenize,
    tokenize_words,
    word_tags,
)
from continual.routers.base import Router, RouterInputs, restrict
from continual.streams import Split, Task
from continual.streams.task import TOKENS, class_index

UNKNOWN = -2  # output not computed yet (-1 is "abstained")
OUT_OF_SCOPE = "out_of_scope"
SetKey = int | str  # a task index (its test split) or OUT_OF_SCOPE


@dataclass
class _Outputs:
    """One adapter's outputs on one test set; ``labels == UNKNOWN`` marks examples not run yet."""

    fingerprint: str
    labels: np.ndarray
    certainty: np.ndarray
    tags: list[np.ndarray | None]  # a tagger's tag per word (sets of token tasks only)

    @classmethod
    def empty(cls, fingerprint: str, n: int) -> _Outputs:
        return cls(fingerprint, np.full(n, UNKNOWN, np.int64), np.zeros(n, np.float32), [None] * n)


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


def run_adapter(
    learner: Learner,
    tokens: Sequence[Sequence[int]],
    k: int,
    outputs: _Outputs,
    todo: np.ndarray,
    starts: Sequence[np.ndarray] | None = None,
) -> None:
    """Fill ``outputs`` at indices ``todo`` with adapter ``k``'s labels and certainty (and, given each text's
    word ``starts``, its tag per word)."""
    for idx, ids, mask in padded_batches(learner, tokens, todo) if len(todo) else ():
        got = learner.classify(ids, mask, torch.full((len(idx),), k, dtype=torch.long, device=learner.device))
        outputs.labels[idx] = got.labels.cpu().numpy()
        outputs.certainty[idx] = got.certainty.cpu().numpy()
        if starts is not None:
            for i, tags in zip(idx, word_tags(got.tags, [starts[i] for i in idx])):
                outputs.tags[i] = tags


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
        outputs = _Outputs.empty("", len(texts))
        run_adapter(learner, tokenized(), k, outputs, np.arange(len(texts)))
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
        self.class_ids = class_index(tasks)  # labels compared by class: shared label spaces count across tasks
        self.kinds = np.array([t.kind for t in tasks])
        self.memoise = memoise
        self.tokens: dict[SetKey, list[list[int]]] = {}
        self.starts: dict[SetKey, list[np.ndarray]] = {}  # token tasks: each word's first sub-token
        for j, t in enumerate(tasks):
            if t.kind == TOKENS:
                self.tokens[j], self.starts[j] = tokenize_words(learner, t.test.texts, f"task '{t.name}' test")
            else:
                self.tokens[j] = tokenize(learner, t.test.texts)
        if len(out_of_scope):
            self.tokens[OUT_OF_SCOPE] = tokenize(learner, out_of_scope)
        self._outputs: dict[tuple[SetKey, int], _Outputs] = {}
        self._features: dict[tuple[SetKey, str, tuple[int, ...] | None], tuple[str, np.ndarray]] = {}
        self._head: dict[SetKey, tuple[list[str], np.ndarray]] = {}
        self._fingerprints: Fingerprints | None = None
        self.computed = 0

    @property
    def has_out_of_scope(self) -> bool:
        return OUT_OF_SCOPE in self.tokens

    def new_step(self) -> None:
        """Call after the learner changed (a task was learned): fingerprints are taken afresh."""
        self._fingerprints = None

    def _fingerprint(self) -> Fingerprints:
        if self._fingerprints is None:  # one call per step: the learner hashes shared weights once
            self._fingerprints = self.learner.fingerprints()
        return self._fingerprints

    def _adapter(self, key: SetKey, k: int, needed: np.ndarray) -> _Outputs:
        """Adapter ``k``'s outputs on set ``key``, computed where ``needed`` and not yet known."""
        tokens = self.tokens[key]
        fingerprint = self._fingerprint().tasks[k]
        outputs = self._outputs.get((key, k))
        if outputs is None or outputs.fingerprint != fingerprint:
            outputs = self._outputs[(key, k)] = _Outputs.empty(fingerprint, len(tokens))
        todo = np.flatnonzero(needed & (outputs.labels == UNKNOWN))
        starts = self.starts.get(key) if self.tasks[k].kind == TOKENS else None
        run_adapter(self.learner, tokens, k, outputs, todo, starts)
        self.computed += len(todo)
        return outputs

    def _frozen_features(self, key: SetKey, pooling: str, layers: tuple[int, ...] | None) -> np.ndarray:
        fingerprint = self._fingerprint().backbone
        cached = self._features.get((key, pooling, layers))
        if cached is None or cached[0] != fingerprint:
            cached = self._features[(key, pooling, layers)] = (
                fingerprint,
                features_of(self.learner, self.tokens[key], pooling, layers),
            )
        return cached[1]

    def _head_scores(self, key: SetKey) -> np.ndarray:
        """A single-head learner's task scores on set ``key``, while every task's fingerprint holds."""
        fingerprints = self._fingerprint().tasks
        cached = self._head.get(key)
        if cached is None or cached[0] != fingerprints:
            cached = self._head[key] = (fingerprints, head_scores_of(self.learner, self.tokens[key]))
        return cached[1]

    def inputs(self, key: SetKey) -> RouterInputs:
        n = len(self.tokens[key])
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
        labels = self.tasks[j].test.labels
        routes = restrict(self.router.route(self.inputs(j)), self.kinds == self.kinds[j])
        if self.tasks[j].kind == TOKENS:
            return self._evaluate_tags(j, routes, before)
        predicted = np.full(len(labels), -1, dtype=np.int64)  # the class each input was given (-1: none)
        for k in np.unique(routes[routes >= 0]).tolist():
            mine = routes == k
            predicted[mine] = self.class_ids[k][self._adapter(j, k, mine).labels[mine]]
        oracle = self._adapter(j, j, np.ones(len(labels), bool)).labels
        return TaskEval(
            float(np.mean(predicted == self.class_ids[j][labels])),
            float(np.mean(routes == j)),
            float(np.mean(oracle == labels)),
            len(labels),
            self.computed - before,
            routes,
        )

    def _entities(self, j: int, k: int, rows: np.ndarray, counts: EntityCounts) -> None:
        """Count task ``j``'s test ``rows`` against the entities adapter ``k`` tags in them (by class)."""
        outputs = self._adapter(j, k, rows)
        gold, predicted = self.tasks[j].test.tags, outputs.tags
        for i in np.flatnonzero(rows):
            assert predicted[i] is not None  # filled by _adapter for every needed row
            counts.add_tags(gold[i], self.class_ids[j], predicted[i], self.class_ids[k])

    def _evaluate_tags(self, j: int, routes: np.ndarray, before: int) -> TaskEval:
        """A token task: entity micro F1 of the routed taggers (rejected texts: entities missed), and the oracle's."""
        task, n = self.tasks[j], len(routes)
        routed, oracle = EntityCounts(), EntityCounts()
        for k in np.unique(routes[routes >= 0]).tolist():
            self._entities(j, k, routes == k, routed)
        for i in np.flatnonzero(routes < 0):
            routed.add_tags(task.test.tags[i], self.class_ids[j], None, self.class_ids[j])  # rejected: all missed
        self._entities(j, j, np.ones(n, bool), oracle)
        names = {int(c): label for c, label in zip(self.class_ids[j], task.labels)}
        return TaskEval(
            routed.micro_f1,
            float(np.mean(routes == j)),
            oracle.micro_f1,
            n,
            self.computed - before,
            routes,
            routed.by_class(names),
        )

    @torch.no_grad()
    def rejection_rate(self) -> float:
        """Share of the out-of-scope texts that the router rejects (routes to no task): OOS recall."""
        return float(np.mean(self.router.route(self.inputs(OUT_OF_SCOPE)).tasks < 0))
