"""A closed-form classifier on random features of the frozen backbone: ridge regression that adds up task by task.

RanPAC (McDonnell et al., NeurIPS 2023), without its adapter: each frozen feature vector (the prototype
router's features: layers 2..6 mean-pooled on MiniLM) is L2-normalised and standardised with the mean and
spread of the first task's training inputs (fixed from then on, so that every later input is mapped as
the first ones were: a running mean would make the sums below inconsistent), projected by a fixed
Gaussian matrix to ``dim`` dimensions and passed through a ReLU: ``h = relu(W z)``. The classifier keeps

    G = sum h hᵀ          (dim x dim, the Gram matrix of every training input seen)
    C = sum h yᵀ          (dim x classes, one-hot targets over every class seen)

and answers with the scores ``h (G + λI)⁻¹ C``. G and C add up task by task, so after task t this is
exactly ridge regression on everything seen, as if trained jointly: nothing is forgotten, and no text is
kept. λ is chosen after every task on held-out validation inputs of the tasks seen so far: a bounded
memory of their frozen features (``validation_per_task`` per task), never their text. The projection is
drawn from ``seed`` (its seed and shape are saved, not the matrix).

:class:`RidgeClassifier` is the shared core: :class:`RidgeRouter` routes a per-task learner's inputs to
the task that owns the best class score (``router=ridge``), and :class:`continual.learners.ridge.RidgeLearner`
is the classifier itself as a learner with one head over all labels (``learner=ridge``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from continual.checks import check_int, check_number
from continual.errors import ContinualError
from continual.routers.base import (
    Reads,
    RouterInputs,
    Routing,
    check_accept_rate,
    decide,
    rejection_threshold,
)
from continual.routers.prototype import labels_of
from continual.streams import Task

log = logging.getLogger(__name__)
LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)  # the candidates λ is chosen from on validation
RULES = ("max", "sum")


def search_grid(grid: Sequence[float], score: Callable[[float], float], start: float | None) -> dict[float, float]:
    """The score of each value of the ascending ``grid`` tried: all of them without ``start``; else ``start`` and its
    neighbours, then each untried neighbour of the best so far (ties: the larger value) until there is none."""
    tried: dict[int, float] = {}
    first = range(len(grid)) if start is None else (grid.index(start) + d for d in (-1, 0, 1))
    for i in first:
        if 0 <= i < len(grid):
            tried[i] = score(grid[i])
    while True:
        best = max(tried, key=lambda i: (tried[i], i))
        untried = [i for i in (best - 1, best + 1) if 0 <= i < len(grid) and i not in tried]
        if not untried:
            return {grid[i]: tried[i] for i in sorted(tried)}
        tried[untried[0]] = score(grid[untried[0]])


def _lower(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.tril_indices(len(matrix))]


def _symmetric(lower: np.ndarray, dim: int) -> np.ndarray:
    full = np.zeros((dim, dim))
    full[np.tril_indices(dim)] = lower
    return full + np.tril(full, -1).T


class RidgeClassifier:
    """Ridge regression on random ReLU features, accumulated task by task; λ chosen on validation.

    Columns are classes in the order they were added (``add`` extends them); ``lambdas`` are the
    candidates for λ (one value: fixed).
    """

    def __init__(
        self, dim: int = 4000, seed: int = 0, lambdas: Sequence[float] = LAMBDAS, where: str = "router"
    ) -> None:
        check_int(dim, f"{where}.dim", low=1)
        check_int(seed, f"{where}.seed")
        if isinstance(lambdas, (str, bytes)) or not lambdas:
            raise ContinualError(f"{where}.lambdas must be a non-empty list of numbers > 0, got {lambdas!r}")
        for value in lambdas:
            check_number(value, f"{where}.lambdas", low=0, above=True)
        self.dim, self.seed, self.lambdas = dim, seed, tuple(sorted(float(v) for v in lambdas))
        self.input_dim = 0
        self.centre = np.zeros(0)  # the first task's mean and spread of L2-normalised inputs (see _project)
        self.spread = np.zeros(0)
        self.gram = np.zeros((0, 0))  # G, float64
        self.targets = np.zeros((0, 0))  # C, float64: [dim, classes]
        self.weights = np.zeros((0, 0), np.float32)  # (G + λI)⁻¹ C for the chosen λ: [dim, classes]
        self.lam = float("nan")
        self._projection: np.ndarray | None = None

    @property
    def classes(self) -> int:
        return self.targets.shape[1]

    @staticmethod
    def _normalised(features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    def _project(self, features: np.ndarray) -> np.ndarray:
        """``relu(W z)``, z the standardised L2-normalised input: ``[n, dim]`` float32 (W drawn from ``seed``; in
        float32, half the bytes a query reads: one query's projection is bound by reading W)."""
        x = self._normalised(features)
        if self._projection is None:
            self.input_dim = self.input_dim or x.shape[1]
            rng = np.random.default_rng([self.seed, self.input_dim, self.dim])
            projection = rng.standard_normal((self.input_dim, self.dim)) / np.sqrt(self.input_dim)
            self._projection = projection.astype(np.float32)
        if x.shape[1] != self.input_dim:
            raise ContinualError(f"ridge: features have {x.shape[1]} dimensions, the classifier {self.input_dim}")
        return np.maximum(((x - self.centre) / self.spread).astype(np.float32) @ self._projection, 0.0)

    def add(self, features: np.ndarray, columns: np.ndarray, new_classes: int) -> None:
        """Fold in training inputs whose class is column ``columns[i]``; ``new_classes`` columns are new. The first
        inputs ever added fix the standardisation."""
        if not self.centre.size:
            x = self._normalised(features)
            self.centre, self.spread = x.mean(0), x.std(0) + 1e-6
        h = self._project(features).astype(np.float64)  # the sums in float64
        if self.gram.size == 0:
            self.gram, self.targets = np.zeros((self.dim, self.dim)), np.zeros((self.dim, 0))
        self.targets = np.concatenate([self.targets, np.zeros((self.dim, new_classes))], axis=1)
        self.gram += h.T @ h
        np.add.at(self.targets.T, columns, h)  # C[:, c] += h for every input of class c
        # rounded to what is saved (float32), so that a resumed or loaded classifier solves exactly as this one
        self.gram, self.targets = (m.astype(np.float32).astype(np.float64) for m in (self.gram, self.targets))

    def _solve(self, lam: float) -> np.ndarray:
        """``(G + λI)⁻¹ C`` by a Cholesky factorisation in float64 (torch: LAPACK with every core)."""
        gram = torch.from_numpy(self.gram) + lam * torch.eye(self.dim, dtype=torch.float64)
        factor = torch.linalg.cholesky(gram)
        return torch.cholesky_solve(torch.from_numpy(self.targets), factor).numpy()

    def fit(self, validation: np.ndarray | None = None, columns: np.ndarray | None = None) -> dict[float, float]:
        """Solve for candidate λs and keep the one most accurate on ``validation`` (features, true columns; the
        larger λ among equals; the middle candidate without validation); the accuracy of each λ tried.

        The first fit tries every candidate; later fits search locally from the λ chosen before (its two
        neighbours, then onwards while a neighbour of the best is untried), since λ moves little from one
        task to the next: about 3 factorisations per task instead of one per candidate."""
        if validation is None or columns is None or not len(validation) or len(self.lambdas) == 1:
            self.lam = self.lambdas[len(self.lambdas) // 2] if len(self.lambdas) > 1 else self.lambdas[0]
            self.weights = self._solve(self.lam).astype(np.float32)
            return {}
        h = self._project(validation)
        solved: dict[float, np.ndarray] = {}

        def accuracy(lam: float) -> float:
            solved[lam] = self._solve(lam)
            return float(np.mean((h @ solved[lam]).argmax(1) == columns))

        tried = search_grid(self.lambdas, accuracy, self.lam if self.lam in self.lambdas else None)
        self.lam = max(tried, key=lambda lam: (tried[lam], lam))
        self.weights = solved[self.lam].astype(np.float32)
        return tried

    def fit_and_report(self, memory: ValidationMemory, who: str) -> None:
        """:meth:`fit` on ``memory``, and a log line with the λ chosen and the validation accuracy of each."""
        accuracy = self.fit(memory.features, memory.columns)
        tried = ", ".join(f"{lam:g}: {acc:.4f}" for lam, acc in accuracy.items()) or "no validation: the middle one"
        log.info("%s: lambda=%g over %d classes (validation accuracy by lambda %s)", who, self.lam, self.classes, tried)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``[n, classes]``: each input's ridge score of every class (about 1 for its class, 0 for others)."""
        return self._project(features) @ self.weights

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """G (its lower triangle, float32), C, λ and the projection's seed and shape; the weights are solved
        again on load (one Cholesky factorisation: 1.9 s measured at dim 4,000 on 2 cores, shared), not stored."""
        return {
            f"{prefix}gram_tril": _lower(self.gram).astype(np.float32),
            f"{prefix}targets": self.targets.astype(np.float32),
            f"{prefix}shape": np.array([self.input_dim, self.dim, self.seed]),
            f"{prefix}centre": self.centre,
            f"{prefix}spread": self.spread,
            f"{prefix}lambda": np.array([self.lam]),
        }

    def load_state_dict(self, state: dict[str, np.ndarray], prefix: str = "") -> None:
        input_dim, dim, seed = (int(v) for v in state[f"{prefix}shape"])
        if (dim, seed) != (self.dim, self.seed):
            raise ContinualError(
                f"ridge state: saved with dim={dim}, seed={seed}; this run has dim={self.dim}, seed={self.seed}"
            )
        self.input_dim, self._projection = input_dim, None
        self.centre, self.spread = state[f"{prefix}centre"], state[f"{prefix}spread"]
        self.gram = _symmetric(state[f"{prefix}gram_tril"].astype(np.float64), dim)
        self.targets = state[f"{prefix}targets"].astype(np.float64)
        self.lam = float(state[f"{prefix}lambda"][0])
        self.weights = self._solve(self.lam).astype(np.float32) if self.classes else np.zeros((0, 0), np.float32)


class ValidationMemory:
    """A seeded sample of each task's validation features and their class columns: what λ is chosen on and
    the rejection threshold calibrated on. Features (float16), never text.

    Each task keeps up to ``per_task`` rows, and all tasks together up to ``limit``: past it, every task
    keeps the first ``limit // tasks`` rows of its sample, so the memory (and a saved version) stays
    bounded however many tasks are learned (3,000 rows of 1,920 features: 11 MB).
    """

    def __init__(self, per_task: int, limit: int = 3000, seed: int = 0, where: str = "router") -> None:
        check_int(per_task, f"{where}.validation_per_task", low=0)
        check_int(limit, f"{where}.validation_limit", low=0)
        self.per_task, self.limit, self.seed = per_task, limit, seed
        self.features = np.zeros((0, 0), np.float16)
        self.columns = np.zeros(0, dtype=np.int64)
        self.tasks = np.zeros(0, dtype=np.int64)  # the task of each row; a task's rows are in its sample's order

    def add(self, task_index: int, features: np.ndarray, columns: np.ndarray) -> None:
        keep = np.random.default_rng([self.seed, task_index]).permutation(len(features))[: self.per_task]
        kept = np.asarray(features[keep], np.float16)
        self.features = kept if not self.features.size else np.concatenate([self.features, kept])
        self.columns = np.concatenate([self.columns, np.asarray(columns)[keep].astype(np.int64)])
        self.tasks = np.concatenate([self.tasks, np.full(len(keep), task_index, dtype=np.int64)])
        if len(self.tasks) > self.limit:
            self._shrink(self.limit // len(np.unique(self.tasks)))

    def _shrink(self, quota: int) -> None:
        """Keep the first ``quota`` rows of every task's sample."""
        starts = np.searchsorted(self.tasks, self.tasks, side="left")  # rows of a task are contiguous, tasks sorted
        keep = np.arange(len(self.tasks)) - starts < quota
        self.features, self.columns, self.tasks = self.features[keep], self.columns[keep], self.tasks[keep]

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}features": self.features, f"{prefix}columns": self.columns, f"{prefix}tasks": self.tasks}

    def load_state_dict(self, state: dict[str, np.ndarray], prefix: str = "") -> None:
        self.features = state[f"{prefix}features"].astype(np.float16)
        self.columns = state[f"{prefix}columns"].astype(np.int64)
        self.tasks = state[f"{prefix}tasks"].astype(np.int64)


class RidgeRouter:
    """``router=ridge``: a task per input from the ridge classifier over every class of every task learned.

    ``rule`` chooses the task: ``max`` (the task that owns the best class score) or ``sum`` (the largest
    summed softmax posterior of its classes, at ``temperature``). ``pooling``/``layers`` choose the frozen
    features as for the prototype router. With ``accept_rate`` an input whose best class score is below
    what ``accept_rate`` of the tasks' validation inputs reach is rejected (a ridge score is about 1 for a
    well-recognised class and near 0 far from every class).
    """

    reads = Reads.FEATURES

    def __init__(
        self,
        dim: int = 4000,
        lambdas: Sequence[float] = LAMBDAS,
        rule: str = "max",
        temperature: float = 0.05,
        pooling: str = "mean",
        layers: Sequence[int] | None = None,
        accept_rate: float | None = None,
        validation_per_task: int = 200,
        validation_limit: int = 3000,
        seed: int = 0,
    ) -> None:
        if rule not in RULES:
            raise ContinualError(f"router.rule must be one of {list(RULES)}, got {rule!r}")
        if pooling not in ("mean", "cls"):
            raise ContinualError(f"router.pooling must be 'mean' or 'cls', got {pooling!r}")
        check_number(temperature, "router.temperature", low=0, above=True)
        check_accept_rate(accept_rate, "router")
        self.ridge = RidgeClassifier(dim, seed, lambdas, "router")
        self.dim, self.lambdas, self.seed, self.validation_per_task = dim, self.ridge.lambdas, seed, validation_per_task
        self.rule, self.temperature = rule, float(temperature)
        self.pooling, self.layers = pooling, None if layers is None else tuple(int(k) for k in layers)
        self.accept_rate = accept_rate
        self.validation_limit = validation_limit
        self.validation = ValidationMemory(validation_per_task, validation_limit, seed)
        self.class_task = np.zeros(0, dtype=np.int64)  # the task that owns each class column
        self.threshold = -np.inf

    def add_task(self, index: int, task: Task, train: RouterInputs, validation: RouterInputs) -> None:
        first = len(self.class_task)
        classes = task.routing_classes
        self.ridge.add(train.features(self.pooling, self.layers), first + labels_of(train), classes)
        self.class_task = np.concatenate([self.class_task, np.full(classes, index, dtype=np.int64)])
        if validation.size:
            self.validation.add(index, validation.features(self.pooling, self.layers), first + labels_of(validation))
        self.ridge.fit_and_report(self.validation, "ridge router")
        self._calibrate()

    def _calibrate(self) -> None:
        memory = self.validation.features
        support = self.ridge.scores(memory).max(1) if len(memory) else np.zeros(0)
        self.threshold = rejection_threshold(support, self.accept_rate)

    def task_scores(self, class_scores: np.ndarray) -> np.ndarray:
        """``[n, tasks]``: each task's best class score (``max``) or summed class posterior (``sum``)."""
        bounds = np.searchsorted(self.class_task, np.arange(self.class_task.max() + 2))[:-1]
        if self.rule == "max":
            return np.maximum.reduceat(class_scores, bounds, axis=1)
        logits = class_scores / self.temperature
        posterior = np.exp(logits - logits.max(1, keepdims=True))
        return np.add.reduceat(posterior / posterior.sum(1, keepdims=True), bounds, axis=1)

    def route(self, inputs: RouterInputs) -> Routing:
        class_scores = self.ridge.scores(inputs.features(self.pooling, self.layers))
        return decide(self.task_scores(class_scores), self.threshold, class_scores.max(1))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **self.ridge.state_dict("ridge."),
            **self.validation.state_dict("validation."),
            "class_task": self.class_task,
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.ridge.load_state_dict(state, "ridge.")
        self.validation.load_state_dict(state, "validation.")
        self.class_task = state["class_task"].astype(np.int64)
        self._calibrate()
