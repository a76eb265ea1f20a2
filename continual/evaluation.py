"""Routed evaluation of one task's test split: fills one cell of the accuracy matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from continual.learners.base import Learner
from continual.routers.base import Router, RoutingBatch
from continual.training import eval_batches, iter_padded


@dataclass(frozen=True)
class TaskEval:
    """Accuracy counts correct only if routed to the right task *and* labelled right."""

    accuracy: float
    router_accuracy: float
    examples: int


@torch.no_grad()
def evaluate_task(learner: Learner, router: Router, index: int, tokens: list[list[int]], labels: np.ndarray,
                  batch_size: int, pad_id: int, device: torch.device) -> TaskEval:
    """Route and predict every test example of task ``index`` (batched by length)."""
    correct = routed_right = 0
    for idx, ids, mask in iter_padded(tokens, eval_batches([len(t) for t in tokens], batch_size), pad_id, device):
        truth = torch.full((len(idx),), index, dtype=torch.long, device=device)
        routes = router.route(RoutingBatch(ids, mask, truth))
        preds = learner.predict(ids, mask, routes)
        hit_task = (routes == truth).cpu().numpy()
        routed_right += int(hit_task.sum())
        correct += int((hit_task & (preds.cpu().numpy() == labels[idx])).sum())
    n = len(tokens)
    return TaskEval(correct / n, routed_right / n, n)
