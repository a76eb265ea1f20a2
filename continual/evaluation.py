"""Routed evaluation that fills the accuracy matrix without recomputing what cannot have changed.

An example counts as correct only if the router sends it to its own task's adapter *and* that
adapter predicts its label. Predictions are remembered per (test set, adapter) together with the
learner's fingerprint of that adapter (a digest of every tensor its predictions depend on). A frozen,
isolated adapter keeps its fingerprint, so its predictions on a fixed test set are computed once,
and filling R costs O(T·N) adapter passes instead of O(T²·N). A learner that does change old
parameters changes the fingerprint, and those cells are recomputed in full. Routing itself is
re-run at every evaluation (free for the oracle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from continual.learners.base import Learner
from continual.routers.base import Router, RoutingBatch
from continual.streams import Task
from continual.training import eval_batches, iter_padded

UNKNOWN = -2  # prediction not computed yet (-1 is "abstained")


@dataclass(frozen=True)
class TaskEval:
    """Accuracy counts correct only if routed to the right task *and* labelled right."""

    accuracy: float
    router_accuracy: float
    examples: int
    computed: int  # adapter predictions actually run (the rest came from the memo)


class Evaluator:
    """Evaluates the test splits of ``tasks`` through ``router`` and ``learner``."""

    def __init__(self, learner: Learner, router: Router, tasks: Sequence[Task], memoise: bool = True) -> None:
        self.learner = learner
        self.router = router
        self.tasks = tasks
        self.memoise = memoise
        trainer = learner.trainer
        self.batch_size, self.device, self.pad_id = trainer.eval_batch_size, learner.device, learner.pad_id
        self.tokens = [learner.backbone.tokenize(list(t.test.texts), trainer.max_length) for t in tasks]
        self._memo: dict[tuple[int, int], tuple[str, np.ndarray]] = {}
        self._fingerprints: list[str] | None = None

    def new_step(self) -> None:
        """Call after the learner changed (a task was learned): fingerprints are taken afresh."""
        self._fingerprints = None

    def _fingerprint(self, k: int) -> str:
        if self._fingerprints is None:  # one call per step: the learner hashes shared weights once
            self._fingerprints = self.learner.fingerprints()
        return self._fingerprints[k]

    def _batches(self, tokens: list[list[int]], subset: np.ndarray):
        order = eval_batches([len(tokens[i]) for i in subset], self.batch_size)
        return iter_padded(tokens, [subset[b] for b in order], self.pad_id, self.device)

    @torch.no_grad()
    def evaluate(self, j: int) -> TaskEval:
        """Accuracy of task ``j``'s test split as things stand now."""
        tokens, labels = self.tokens[j], self.tasks[j].test.labels
        n = len(tokens)
        routes = np.empty(n, dtype=np.int64)
        for idx, ids, mask in self._batches(tokens, np.arange(n)):
            truth = torch.full((len(idx),), j, dtype=torch.long, device=self.device)
            routes[idx] = self.router.route(RoutingBatch(ids, mask, truth)).cpu().numpy()
        preds = np.full(n, -1, dtype=np.int64)
        computed = 0
        for k in np.unique(routes[routes >= 0]).tolist():
            mine = routes == k
            fingerprint = self._fingerprint(k) if self.memoise else ""
            cached = self._memo.get((j, k))
            known = cached[1] if cached is not None and cached[0] == fingerprint else np.full(n, UNKNOWN, np.int64)
            todo = np.flatnonzero(mine & (known == UNKNOWN))
            for idx, ids, mask in self._batches(tokens, todo) if len(todo) else ():
                adapters = torch.full((len(idx),), k, dtype=torch.long, device=self.device)
                known[idx] = self.learner.predict(ids, mask, adapters).cpu().numpy()
            computed += len(todo)
            if self.memoise:
                self._memo[(j, k)] = (fingerprint, known)
            preds[mine] = known[mine]
        right_task = routes == j
        return TaskEval(float(np.mean(right_task & (preds == labels))), float(np.mean(right_task)), n, computed)
