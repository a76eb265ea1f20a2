"""Prototype routing: per-class statistics of frozen features, nearest task by Mahalanobis distance.

This is the EPI recipe (Wang et al., 2023): the router keeps, per learned class, the mean of the
frozen backbone's pooled features and one covariance shared by all classes (the pooled within-class
scatter). An input goes to the task owning the nearest class mean. Nothing but statistics is kept:
no past text and no past features, except an optional small validation-feature memory used only to
calibrate the rejection threshold (``calibration_per_task``, 0 to disable).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from continual import migrations
from continual.checks import check_int
from continual.errors import ContinualError
from continual.routers.base import Reads, RouterInputs, Routing, check_accept_rate, decide, rejection_threshold
from continual.streams import Task

METRICS = ("mahalanobis", "cosine", "euclidean")


class ClassStatistics:
    """Running per-class means and a shared within-class covariance, updated one task at a time."""

    def __init__(self, shrinkage: float = 0.05) -> None:
        self.shrinkage = shrinkage
        self.means = np.zeros((0, 0))
        self.class_task = np.zeros(0, dtype=np.int64)
        self.scatter = np.zeros((0, 0))
        self.count = 0
        self._eig: tuple[np.ndarray, np.ndarray] | None = None
        self._whitened: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # root, means @ root, their norms

    def add(self, task_index: int, features: np.ndarray, labels: np.ndarray, num_labels: int) -> None:
        x = features.astype(np.float64)
        if self.count == 0:
            self.means, self.scatter = np.zeros((0, x.shape[1])), np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self.means.shape[1]:
            raise ContinualError(f"router: features have {x.shape[1]} dimensions, the statistics {self.means.shape[1]}")
        means = np.stack(
            [x[labels == c].mean(0) if np.any(labels == c) else np.zeros(x.shape[1]) for c in range(num_labels)]
        )
        centred = x - means[labels]
        self.scatter += centred.T @ centred
        self.count += len(x)
        self.means = np.concatenate([self.means, means])
        self.class_task = np.concatenate([self.class_task, np.full(num_labels, task_index, dtype=np.int64)])
        self._eig = self._whitened = None

    @property
    def covariance(self) -> np.ndarray:
        """Pooled within-class covariance, shrunk towards a scaled identity so that it stays invertible."""
        dof = max(self.count - len(self.means), 1)
        cov = self.scatter / dof
        scale = np.trace(cov) / len(cov)
        return (1.0 - self.shrinkage) * cov + self.shrinkage * scale * np.eye(len(cov))

    def _eigen(self) -> tuple[np.ndarray, np.ndarray]:
        if self._eig is None:
            values, vectors = np.linalg.eigh(self.covariance)
            self._eig = np.clip(values, 0.0, None), vectors
        return self._eig

    def precision_root(self) -> np.ndarray:
        """``L`` with ``L @ L.T`` = (pseudo-)inverse covariance: Mahalanobis distance = Euclidean after ``x @ L``.

        Directions with (numerically) zero variance are dropped rather than inverted, so a singular
        covariance (fewer examples than dimensions, ``shrinkage=0``) still gives finite distances.
        """
        values, vectors = self._eigen()
        keep = values > values.max() * 1e-10
        return vectors[:, keep] / np.sqrt(values[keep])

    def covariance_root(self) -> np.ndarray:
        """``A`` with ``A @ A.T`` = covariance: ``z @ A.T`` for standard normal ``z`` samples the shared Gaussian."""
        values, vectors = self._eigen()
        return vectors * np.sqrt(values)

    def class_scores(self, features: np.ndarray, metric: str) -> np.ndarray:
        """``[inputs, classes]``, higher = closer: minus squared distance, or cosine similarity."""
        x = features.astype(np.float64)
        means = self.means
        if metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
            return x @ (means / np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)).T
        if metric == "mahalanobis":
            root, means, squares = self._whitened_means()
            x = x @ root
        else:
            squares = (means**2).sum(1)
        return -((x**2).sum(1)[:, None] - 2.0 * x @ means.T + squares[None, :])

    def _whitened_means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The precision root, the class means in its whitened space and their squared norms, kept until the
        statistics change: re-projecting thousands of means on every call would cost more than the queries."""
        if self._whitened is None:
            root = self.precision_root()
            means = self.means @ root
            self._whitened = root, means, (means**2).sum(1)
        return self._whitened

    def task_scores(self, class_scores: np.ndarray, num_tasks: int) -> np.ndarray:
        """Per task, the best score among its classes: one ``maximum.reduceat`` over the classes in task
        order (each task's classes are contiguous, added one task at a time), no loop over tasks."""
        if len(self.class_task) and np.any(np.diff(self.class_task) < 0):
            raise ContinualError("router statistics: classes are not in task order (a corrupted router state?)")
        bounds = np.searchsorted(self.class_task, np.arange(num_tasks + 1))
        if np.any(np.diff(bounds) == 0):
            raise ContinualError(f"router statistics: some of the first {num_tasks} tasks have no classes")
        return np.maximum.reduceat(class_scores[:, : bounds[-1]], bounds[:-1], axis=1)

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        # the scatter is symmetric: its lower triangle (all that eigh reads) is half the bytes
        return {
            f"{prefix}means": self.means,
            f"{prefix}class_task": self.class_task,
            f"{prefix}scatter_tril": self.scatter[np.tril_indices(len(self.scatter))],
            f"{prefix}count": np.array([self.count]),
        }

    def load_state_dict(self, state: dict[str, np.ndarray], prefix: str = "") -> None:
        state = migrations.router_state(state, prefix)
        self.means, self.class_task = state[f"{prefix}means"], state[f"{prefix}class_task"].astype(np.int64)
        self.count = int(state[f"{prefix}count"][0])
        dim = self.means.shape[1]
        lower = np.zeros((dim, dim))
        lower[np.tril_indices(dim)] = state[f"{prefix}scatter_tril"]
        self.scatter = lower + np.tril(lower, -1).T
        self._eig = self._whitened = None


def labels_of(inputs: RouterInputs) -> np.ndarray:
    """The label of every input a router learns from (given for training splits)."""
    if inputs.labels is None:
        raise ValueError("a router learns from labelled inputs; these carry no labels")
    return inputs.labels


class CalibrationMemory:
    """Up to ``per_task`` validation features per task: re-scored whenever the rejection threshold is needed."""

    def __init__(self, per_task: int, seed: int = 0) -> None:
        check_int(per_task, "router.calibration_per_task", low=0)
        self.per_task, self.seed = per_task, seed
        self.features: np.ndarray | None = None

    def add(self, task_index: int, features: np.ndarray) -> None:
        rng = np.random.default_rng([self.seed, task_index])
        keep = features[np.sort(rng.permutation(len(features))[: self.per_task])]
        self.features = keep if self.features is None else np.concatenate([self.features, keep])


class FeatureRouter:
    """What routers over frozen features share: the feature choice, class statistics and rejection.

    Subclasses implement ``_scores(features) -> [inputs, tasks]`` (higher = more likely).
    """

    reads = Reads.FEATURES

    def __init__(
        self,
        pooling: str,
        layers: Sequence[int] | None,
        shrinkage: float,
        accept_rate: float | None,
        calibration_per_task: int,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ContinualError(f"router.pooling must be 'mean' or 'cls', got {pooling!r}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ContinualError(f"router.shrinkage must be in [0, 1], got {shrinkage!r}")
        check_accept_rate(accept_rate, "router")
        self.pooling = pooling
        self.layers = None if layers is None else tuple(int(k) for k in layers)
        self.shrinkage, self.calibration_per_task = shrinkage, calibration_per_task
        self.accept_rate = accept_rate
        self.stats = ClassStatistics(shrinkage)
        self.calibration = CalibrationMemory(calibration_per_task if accept_rate is not None else 0)
        self.num_tasks = 0
        self.threshold = -np.inf

    def _features(self, inputs: RouterInputs) -> np.ndarray:
        return inputs.features(self.pooling, self.layers)

    def _scores(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _support(self, features: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """How in-scope each input looks (compared with the rejection threshold); default: its best task score."""
        return scores.max(1)

    def _add_statistics(self, index: int, task: Task, train: RouterInputs) -> np.ndarray:
        """Fold the task's train features into the statistics; returns them."""
        features = self._features(train)
        self.stats.add(index, features, labels_of(train), task.routing_classes)
        self.num_tasks = index + 1
        return features

    def _calibrate(self, index: int | None = None, validation: RouterInputs | None = None) -> None:
        """Add the task's validation features (when given) and recompute the rejection threshold."""
        if self.accept_rate is not None and validation is not None and index is not None:
            self.calibration.add(index, self._features(validation))
        memory = self.calibration.features
        support = self._support(memory, self._scores(memory)) if memory is not None and len(memory) else np.zeros(0)
        self.threshold = rejection_threshold(support, self.accept_rate)

    def route(self, inputs: RouterInputs) -> Routing:
        features = self._features(inputs)
        scores = self._scores(features)
        return decide(scores, self.threshold, self._support(features, scores))

    def state_dict(self) -> dict[str, np.ndarray]:
        state = self.stats.state_dict()
        if self.calibration.features is not None:
            state["calibration"] = self.calibration.features
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.stats.load_state_dict(state)
        self.num_tasks = int(self.stats.class_task.max()) + 1 if len(self.stats.class_task) else 0
        self.calibration.features = state.get("calibration")


class PrototypeRouter(FeatureRouter):
    """Nearest class mean (``metric``: mahalanobis with shared covariance, cosine, euclidean) -> its task.

    ``pooling`` (mean or cls) and ``layers`` (hidden-state indices, concatenated; None: the last five
    layers, which route best, see the README) choose the frozen
    features. With ``accept_rate`` set, an input whose best task score falls below the score that
    ``accept_rate`` of the learned tasks' validation inputs reach is rejected (routed to -1).
    """

    def __init__(
        self,
        metric: str = "mahalanobis",
        pooling: str = "mean",
        layers: Sequence[int] | None = None,
        shrinkage: float = 0.05,
        accept_rate: float | None = None,
        calibration_per_task: int = 200,
    ) -> None:
        if metric not in METRICS:
            raise ContinualError(f"router.metric must be one of {', '.join(METRICS)}, got {metric!r}")
        super().__init__(pooling, layers, shrinkage, accept_rate, calibration_per_task)
        self.metric = metric

    def add_task(self, index: int, task: Task, train: RouterInputs, validation: RouterInputs) -> None:
        self._add_statistics(index, task, train)
        self._calibrate(index, validation)

    def _scores(self, features: np.ndarray) -> np.ndarray:
        return self.stats.task_scores(self.stats.class_scores(features, self.metric), self.num_tasks)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self._calibrate()
