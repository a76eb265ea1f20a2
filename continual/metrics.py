"""Continual-learning metrics as pure functions of the accuracy matrix.

Conventions used everywhere in ``continual``:

* Tasks are **0-based**. ``R[i, j]`` is the accuracy on task ``j``'s test split after training
  through task ``i`` (rows: training progress, columns: evaluated task). Entries with ``j > i``
  (tasks not yet seen) are ``nan``.
* A metric "at step i" is computed on the leading ``(i+1) x (i+1)`` block, i.e. as if the stream had
  ended after task ``i``. Functions take the block they should look at; use :func:`prefix`.
* Our ``forgetting`` is Chaudhry et al. (2018): the *maximum* earlier accuracy minus the final one.
  It is not Avalanche's "forgetting" (first minus last).
* Entries not evaluated are ``nan`` too (``eval.every``, ``eval.tasks=sample:K``: see
  :mod:`continual.run.schedule`). Every metric uses what was evaluated: R[j, j] is then the first
  evaluation of task j after it was learned, and a task enters BWT and forgetting when it was
  evaluated in the last row and at least once before it. On a full matrix these are the usual
  definitions.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "forward_transfer_of_diagonals",
    "learning_accuracy",
    "prefix",
    "summary",
]


def _square(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {R.shape}")
    return R


def prefix(R: np.ndarray, i: int) -> np.ndarray:
    """The ``(i+1) x (i+1)`` block of R: the matrix as it stood after training task ``i``."""
    return _square(R)[: i + 1, : i + 1]


def _mean(values: list[float] | np.ndarray) -> float:
    """Mean of the finite values; ``nan`` when there are none."""
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _learned(R: np.ndarray, j: int, before: int) -> float:
    """R[j, j], or the first evaluation of task ``j`` in rows ``j..before-1`` (``nan`` if none)."""
    column = R[j:before, j]
    finite = np.flatnonzero(np.isfinite(column))
    return float(column[finite[0]]) if len(finite) else float("nan")


def average_accuracy(R: np.ndarray) -> float:
    """ACC = mean_{j<T} R[T-1, j]: mean accuracy over all tasks after the last one was learned."""
    R = _square(R)
    return _mean(R[-1, :])


def learning_accuracy(R: np.ndarray) -> float:
    """LA = mean_j R[j, j]: how well each task was learned right after training on it."""
    R = _square(R)
    return _mean([_learned(R, j, len(R)) for j in range(len(R))])


def backward_transfer(R: np.ndarray) -> float:
    """BWT (Lopez-Paz & Ranzato, 2017) = mean_{j<T-1} (R[T-1, j] - R[j, j]).

    Negative values mean forgetting, positive values mean later tasks improved earlier ones.
    Undefined (``nan``) for a single task: there is no earlier task to transfer back to.
    """
    R = _square(R)
    T = R.shape[0]
    if T == 1:
        return float("nan")
    return _mean([R[T - 1, j] - _learned(R, j, T - 1) for j in range(T - 1)])


def forgetting(R: np.ndarray) -> float:
    """Forgetting (Chaudhry et al., 2018) = mean_{j<T-1} (max_{j<=l<T-1} R[l, j] - R[T-1, j]).

    The drop from the best accuracy a task had *before the last step* to its final accuracy. A term
    is negative only when the final accuracy beats every earlier one (backward transfer); with
    isolated, frozen adapters and the oracle router it is exactly 0. ``nan`` for a single task.
    """
    R = _square(R)
    T = R.shape[0]
    if T == 1:
        return float("nan")
    earlier = [R[j : T - 1, j][np.isfinite(R[j : T - 1, j])] for j in range(T - 1)]
    return _mean([np.max(e) - R[T - 1, j] if len(e) else np.nan for j, e in enumerate(earlier)])


def forward_transfer(R: np.ndarray, reference: np.ndarray) -> float:
    """FWT against a reference run: mean_j (R[j, j] - R_ref[j, j]) over the tasks after the first.

    GEM's FWT (Lopez-Paz & Ranzato 2017) scores a task *before* it is trained, which a new adapter per
    task cannot do. Here the reference ``b_j`` is the accuracy of an independently initialised adapter
    on task ``j`` just after learning it (a run with ``learner.transfer=none``, same seed and order):
    positive FWT means that what earlier tasks learned made the new one learn better. Task 0 has no
    earlier task to gain from and is left out.
    """
    R, reference = _square(R), _square(reference)
    if R.shape != reference.shape:
        raise ValueError(f"R is {R.shape}, the reference {reference.shape}: runs of the same stream are needed")
    return forward_transfer_of_diagonals(np.diag(R), np.diag(reference))


def forward_transfer_of_diagonals(learned: np.ndarray, reference: np.ndarray) -> float:
    """:func:`forward_transfer` from the diagonals alone (R[j, j] per task, in stream order): what a
    results table has when it reads each task's first logged accuracy."""
    learned, reference = np.asarray(learned, dtype=float), np.asarray(reference, dtype=float)
    if len(learned) < 2:
        return float("nan")
    return float(np.mean(learned[1:] - reference[1:]))


def summary(R: np.ndarray) -> dict[str, float]:
    """All scalar metrics of a (prefix of an) accuracy matrix, keyed by their MLflow names."""
    return {
        "avg_acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "learning_acc": learning_accuracy(R),
    }
