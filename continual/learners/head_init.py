"""Where a new task's head starts: at random, or where a linear classifier on its features already ends.

A fresh adapter changes nothing at first (its up-projection starts at zero), so the features its head reads
before training are the frozen backbone's. A head started at random spends its first steps learning what
those features already tell; a head started from a classifier fitted on them (LP-FT: Kumar et al., ICLR
2022, "probe first, then fine-tune") begins there, and its gradients then move the adapter only where the
probe is wrong, which also distorts the features less.

``lda``: linear discriminant analysis in closed form: class means and one within-class covariance shared by
the task's classes, shrunk towards a scaled identity (:data:`SHRINKAGE`); weights ``Sigma^-1 mu_c`` and
biases ``-mu_c Sigma^-1 mu_c / 2 + log prior_c``, i.e. the Gaussian model's log-posteriors, up to a constant.
``probe``: multinomial logistic regression on the same features, full batch, L2-penalised (:data:`PROBE_L2`),
by L-BFGS from zero (:data:`PROBE_STEPS` iterations at most).

Either costs one forward pass over the task's training texts (no gradients) before the first step, and a fit
in the hidden size (384 for MiniLM).
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_INITS = ("random", "lda", "probe")
SHRINKAGE = 0.1  # LDA's covariance: (1 - s) * pooled scatter + s * its mean variance * I (invertible with few texts)
PROBE_L2 = 1e-3  # the probe's penalty on its weights (per example, on features of unit scale)
PROBE_STEPS = 100  # L-BFGS iterations at most


@torch.no_grad()
def lda(features: torch.Tensor, labels: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LDA's weights ``[width, hidden]`` and biases ``[width]`` on ``features`` ``[n, hidden]`` with ``labels``.

    A class without examples gets zero weights and a bias below every other class's (never chosen at first)."""
    x = features.double()
    counts = torch.bincount(labels, minlength=width).double()
    sums = torch.zeros(width, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    centred = x - means[labels]
    scatter = centred.T @ centred / max(len(x) - int((counts > 0).sum()), 1)
    scale = scatter.diagonal().mean().clamp(min=1e-12)
    cov = (1 - SHRINKAGE) * scatter + SHRINKAGE * scale * torch.eye(len(scatter), dtype=x.dtype)
    weight = torch.linalg.solve(cov, means.T).T
    bias = -0.5 * (weight * means).sum(1) + torch.log(counts.clamp(min=1) / counts.sum())
    seen = counts > 0
    weight[~seen] = 0.0
    if bool((~seen).any()):
        bias[~seen] = bias[seen].min() - 10.0
    return weight.float(), bias.float()


def probe(features: torch.Tensor, labels: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A logistic-regression probe's weights ``[width, hidden]`` and biases ``[width]`` (see the module)."""
    x = features.float()
    scale = x.std(0).mean().clamp(min=1e-6)  # the penalty acts on features of about unit scale
    weight = torch.zeros(width, x.shape[1], requires_grad=True)
    bias = torch.zeros(width, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy((x / scale) @ weight.T + bias, labels)
        loss = loss + PROBE_L2 * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return (weight / scale).detach(), bias.detach()


FITS = {"lda": lda, "probe": probe}


def start_head(head: nn.Linear, how: str, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Set ``head``'s weights as ``how`` says (``random`` leaves them as drawn) from ``features`` ``[n, hidden]``
    and their ``labels`` ``[n]`` (only the examples a loss would count)."""
    if how == "random" or len(labels) == 0:
        return
    weight, bias = FITS[how](features.detach().cpu(), labels.cpu(), head.out_features)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
