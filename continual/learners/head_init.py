"""Where a new task's head starts: at random, or where a linear classifier on its features already ends.

A fresh adapter changes nothing at first (its up-projection starts at zero), so the features its head reads
before training are the frozen backbone's. A head started at random spends its first steps learning what
those features already tell; a head started from a classifier fitted on them (LP-FT: Kumar et al., ICLR
2022, "probe first, then fine-tune") begins there, and its gradients then move the adapter only where the
probe is wrong, which also distorts the features less.

``lda``: linear discriminant analysis in closed form: class means and one within-class covariance shared by
the task's classes, shrunk towards a scaled identity (:data:`SHRINKAGE`); weights ``Sigma^-1 mu_c`` and
biases ``-mu_c Sigma^-1 mu_c / 2 + log prior_c``, i.e. the Gaussian model's log-posteriors, up to a constant.
``probe``: multinomial logistic regression on the same features, full batch, L2-penalised, by L-BFGS from zero
(:data:`PROBE_STEPS` iterations at most). The penalty is the one of :data:`PROBE_L2S` whose probe has the lowest
cross-entropy on the task's validation texts (:data:`PROBE_L2` without any). It matters: a weak penalty fits
small, hard tasks perfectly (cl5's reviews, 180 texts per class: 99% train accuracy, validation loss 2.8-3.0), so
the head starts over-confident, its loss leaves the adapter little to learn, and the task ends below a random
head's start; a strong one blurs many-class tasks that the frozen features already separate (CLINC150's
domains). Validation loss picks 0.03-0.1 on the first and 0.001-0.003 on the second.

Either costs one forward pass over the task's training texts (no gradients) before the first step, and a fit
in the hidden size (384 for MiniLM); the probe also one over its validation texts and one fit per penalty tried.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_INITS = ("random", "lda", "probe")
SHRINKAGE = 0.1  # LDA's covariance: (1 - s) * pooled scatter + s * its mean variance * I (invertible with few texts)
PROBE_L2 = 1e-3  # the probe's penalty on its weights (per example, on features of unit scale) without validation
PROBE_L2S = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the penalties tried against validation (see the module)
PROBE_STEPS = 100  # L-BFGS iterations at most

Examples = tuple[torch.Tensor, torch.Tensor]  # features [n, hidden] and their labels [n]


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


def probe(
    features: torch.Tensor, labels: torch.Tensor, width: int, l2: float = PROBE_L2
) -> tuple[torch.Tensor, torch.Tensor]:
    """A logistic-regression probe's weights ``[width, hidden]`` and biases ``[width]``, penalised by ``l2``."""
    x = features.float()
    scale = x.std(0).mean().clamp(min=1e-6)  # the penalty acts on features of about unit scale
    weight = torch.zeros(width, x.shape[1], requires_grad=True)
    bias = torch.zeros(width, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy((x / scale) @ weight.T + bias, labels)
        loss = loss + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return (weight / scale).detach(), bias.detach()


def validated_probe(train: Examples, held_out: Examples, width: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The probe on ``train`` (features, labels) whose penalty of :data:`PROBE_L2S` has the lowest cross-entropy
    on ``held_out``; its weights, biases and that penalty (the smaller penalty on a tie)."""
    best: tuple[float, torch.Tensor, torch.Tensor, float] | None = None
    for l2 in PROBE_L2S:
        weight, bias = probe(*train, width, l2)  # detached: nothing below builds a graph
        loss = nn.functional.cross_entropy(held_out[0].float() @ weight.T + bias, held_out[1]).item()
        if best is None or loss < best[0]:
            best = (loss, weight, bias, l2)
    assert best is not None
    return best[1], best[2], best[3]


def fitted_probe(train: Examples, held_out: Examples | None, width: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The probe on ``train`` with its penalty chosen on ``held_out`` where that has examples, else
    :data:`PROBE_L2`; its weights, biases and penalty."""
    if held_out is None or len(held_out[1]) == 0:
        return *probe(*train, width), PROBE_L2
    return validated_probe(train, held_out, width)


def start_head(head: nn.Linear, how: str, train: Examples, held_out: Examples | None = None) -> float | None:
    """Set ``head``'s weights as ``how`` says (``random`` leaves them as drawn) from the ``train`` examples (only
    those a loss would count); ``probe`` chooses its penalty on ``held_out`` where it has examples. Returns the
    probe's penalty (``None`` for the others)."""
    features, labels = train[0].detach().cpu(), train[1].cpu()
    if how == "random" or len(labels) == 0:
        return None
    l2 = None
    if how == "lda":
        weight, bias = lda(features, labels, head.out_features)
    else:
        held = None if held_out is None else (held_out[0].detach().cpu(), held_out[1].cpu())
        weight, bias, l2 = fitted_probe((features, labels), held, head.out_features)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return l2
