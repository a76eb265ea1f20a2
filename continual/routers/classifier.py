"""A scikit-learn logistic regression over frozen features, refit as tasks arrive, without past text.

Past tasks are represented by their class statistics (:class:`ClassStatistics`): at every new task
the classifier is refit on ``pseudo_per_class`` pseudo-features drawn per class from a Gaussian with
the class mean and the shared covariance. ``memory_per_class`` > 0 adds a bounded memory of real
features (at most that many per class; features, never text). The classifier predicts classes; a
task's probability is the sum over its classes. A discriminative classifier is confidently wrong
far from its data, so rejection (``accept_rate``) uses the Mahalanobis distance to the nearest
class mean instead of the classifier's probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from continual.checks import check_int
from continual.errors import ContinualError
from continual.routers.base import RouterInputs
from continual.routers.prototype import FeatureRouter, labels_of
from continual.streams import Task


class ClassifierRouter(FeatureRouter):
    """Multinomial logistic regression on standardised frozen features; routes to the most probable task."""

    def __init__(
        self,
        pooling: str = "mean",
        layers: Sequence[int] = (-1,),
        pseudo_per_class: int = 100,
        memory_per_class: int = 0,
        regularization: float = 1.0,
        max_iter: int = 300,
        shrinkage: float = 0.05,
        accept_rate: float | None = None,
        calibration_per_task: int = 200,
        seed: int = 0,
    ) -> None:
        for name, value in (("pseudo_per_class", pseudo_per_class), ("memory_per_class", memory_per_class)):
            check_int(value, f"router.{name}", low=0)
        if pseudo_per_class == 0 and memory_per_class == 0:
            raise ContinualError(
                "router: pseudo_per_class and memory_per_class are both 0, so there is nothing "
                "to train the classifier on"
            )
        if not regularization > 0:
            raise ContinualError(f"router.regularization must be > 0, got {regularization!r}")
        super().__init__(pooling, layers, shrinkage, accept_rate, calibration_per_task)
        self.pseudo_per_class, self.memory_per_class = pseudo_per_class, memory_per_class
        self.regularization, self.max_iter, self.seed = regularization, max_iter, seed
        self.memory = np.zeros((0, 0), dtype=np.float32)
        self.memory_class = np.zeros(0, dtype=np.int64)
        self.mean: np.ndarray = np.zeros(0)  # standardisation and the fitted model, as plain arrays
        self.scale: np.ndarray = np.zeros(0)
        self.coef: np.ndarray = np.zeros((0, 0))
        self.intercept: np.ndarray = np.zeros(0)

    def add_task(self, index: int, task: Task, train: RouterInputs, validation: RouterInputs) -> None:
        first_class = len(self.stats.means)
        features = self._add_statistics(index, task, train)
        if self.memory_per_class:
            labels = labels_of(train)
            rng = np.random.default_rng([self.seed, index, 1])
            keep = np.concatenate(
                [
                    rng.permutation(np.flatnonzero(labels == c))[: self.memory_per_class]
                    for c in range(task.routing_classes)
                ]
            )
            self.memory = features[keep] if not len(self.memory) else np.concatenate([self.memory, features[keep]])
            self.memory_class = np.concatenate([self.memory_class, first_class + labels[keep]])
        self._fit(index)
        self._calibrate(index, validation)

    def _training_set(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        n = self.pseudo_per_class
        classes = len(self.stats.means)
        parts, labels = [], []
        if n:
            root = self.stats.covariance_root()
            noise = rng.standard_normal((classes, n, root.shape[0])) @ root.T
            parts.append((self.stats.means[:, None, :] + noise).reshape(classes * n, -1))
            labels.append(np.repeat(np.arange(classes), n))
        if len(self.memory):
            parts.append(self.memory.astype(np.float64))
            labels.append(self.memory_class)
        return np.concatenate(parts), np.concatenate(labels)

    def _fit(self, index: int) -> None:
        from sklearn.linear_model import LogisticRegression

        x, y = self._training_set(index)
        self.mean, self.scale = x.mean(0), x.std(0).clip(1e-6)
        model = LogisticRegression(C=self.regularization, max_iter=self.max_iter)
        model.fit((x - self.mean) / self.scale, y)
        # keep plain arrays (saved as safetensors, no pickles); classes absent from y get no column
        coef = np.zeros((len(self.stats.means), x.shape[1]))
        intercept = np.full(len(self.stats.means), -np.inf)
        coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
        self.coef, self.intercept = coef, intercept

    def _scores(self, features: np.ndarray) -> np.ndarray:
        logits = ((features.astype(np.float64) - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(1, keepdims=True)
        task_probs = np.stack([probs[:, self.stats.class_task == t].sum(1) for t in range(self.num_tasks)], axis=1)
        return np.log(task_probs.clip(1e-30))

    def _support(self, features: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return self.stats.class_scores(features, "mahalanobis").max(1)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **super().state_dict(),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "memory": self.memory,
            "memory_class": self.memory_class,
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.mean, self.scale, self.coef, self.intercept = (state[k] for k in ("mean", "scale", "coef", "intercept"))
        self.memory, self.memory_class = state["memory"], state["memory_class"].astype(np.int64)
        self._calibrate()
