"""Elastic weight consolidation (EWC; Kirkpatrick et al. 2017) on a learner's shared parameters.

After each task the diagonal of the empirical Fisher information is estimated on that task's
training data (squared per-example gradients of the true label's log-likelihood) and *added* to the
Fisher of earlier tasks; the anchor is the parameters after the latest task. Training the next task
then adds ``lambda / 2 * sum_i F_i (theta_i - anchor_i)^2`` to the loss. One accumulated Fisher and
one anchor instead of one pair per task is the "online EWC" simplification (Schwarz et al. 2018,
with decay 1), which keeps memory constant in the number of tasks.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from continual.errors import ContinualError


@dataclass(frozen=True)
class EWCConfig:
    """Penalty strength ``lambda_`` (config key ``lambda``) and training examples per Fisher estimate (0 = all)."""

    lambda_: float = 1000.0
    fisher_samples: int = 256

    def __post_init__(self) -> None:
        if (
            isinstance(self.lambda_, bool)
            or not isinstance(self.lambda_, (int, float))
            or not math.isfinite(self.lambda_)
            or self.lambda_ < 0
        ):
            raise ContinualError(f"learner.ewc.lambda must be a non-negative number, got {self.lambda_!r}")
        if isinstance(self.fisher_samples, bool) or not isinstance(self.fisher_samples, int) or self.fisher_samples < 0:
            raise ContinualError(
                f"learner.ewc.fisher_samples must be a non-negative integer, got {self.fisher_samples!r}"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> EWCConfig:
        """From the ``learner.ewc`` config node (``lambda`` is a Python keyword, hence the field ``lambda_``)."""
        unknown = sorted(set(options) - {"lambda", "fisher_samples"})
        if unknown:
            raise ContinualError(f"learner.ewc: unknown keys {unknown}; known: ['fisher_samples', 'lambda']")
        values = dict(options)
        if "lambda" in values:
            values["lambda_"] = values.pop("lambda")
        return cls(**values)


class EWC:
    """The accumulated diagonal Fisher and the anchor of ``params``, and the quadratic penalty around it."""

    def __init__(self, config: EWCConfig, params: Sequence[tuple[str, nn.Parameter]]) -> None:
        self.config = config
        self.params = list(params)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self) -> torch.Tensor | None:
        """``lambda / 2 * sum F (theta - anchor)^2``, or None before the first task is consolidated."""
        if not self.fisher:
            return None
        terms = [((p - self.anchor[n]).pow(2) * self.fisher[n]).sum() for n, p in self.params]
        return 0.5 * self.config.lambda_ * functools.reduce(operator.add, terms)

    def consolidate(self, examples: int, loss_of: Callable[[int], torch.Tensor]) -> None:
        """Add the Fisher of the task just learned (``loss_of(i)``: example ``i``'s loss) and re-anchor here."""
        if examples:
            estimate = {n: torch.zeros_like(p) for n, p in self.params}
            tensors = [p for _, p in self.params]
            for p in tensors:
                p.requires_grad_(True)
            try:
                with torch.enable_grad():
                    for i in range(examples):
                        grads = torch.autograd.grad(loss_of(i), tensors, allow_unused=True)
                        for (n, _), g in zip(self.params, grads):
                            if g is not None:  # e.g. a pooler that mean pooling never uses
                                estimate[n] += g.detach().pow(2)
            finally:
                for p in tensors:
                    p.requires_grad_(False)
            for n, f in estimate.items():
                self.fisher[n] = self.fisher.get(n, 0) + f / examples
        self.reanchor()

    def reanchor(self) -> None:
        """The anchor becomes the current parameters (after a task, or after restoring them)."""
        self.anchor = {n: p.detach().clone() for n, p in self.params}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The Fisher only: the anchor equals the shared parameters saved beside it (both are after the last task)."""
        return {f"fisher.{n}": f.detach().cpu().contiguous() for n, f in self.fisher.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        device = self.params[0][1].device if self.params else torch.device("cpu")
        self.fisher = {n[len("fisher.") :]: t.to(device) for n, t in state.items() if n.startswith("fisher.")}
        self.reanchor()
