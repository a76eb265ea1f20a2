"""The learner protocol: learn one task at a time, predict for a batch routed per example."""

from __future__ import annotations

import hashlib

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from continual.backbone import Backbone
from continual.errors import ContinualError
from continual.streams import Task
from continual.training import TrainerConfig, eval_batches, iter_padded

LossCallback = Callable[[int, float], None]  # (optimizer step within the task, loss)


@dataclass(frozen=True)
class LearnReport:
    """What learning one task cost and achieved."""

    task: str
    steps: int
    examples: int
    seconds: float
    final_loss: float
    val_acc: float
    trainable_params: int

    @property
    def samples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")


class Classified(NamedTuple):
    """Per-example outputs of the routed heads; ``labels`` is -1 where an example went to no adapter."""

    labels: torch.Tensor
    confidence: torch.Tensor  # softmax probability of the predicted label
    certainty: torch.Tensor  # 1 - entropy / log(number of labels): 1 = one-hot, 0 = uniform


@dataclass(frozen=True)
class Fingerprints:
    """Digests of the shared (backbone) tensors and, per learned task, of everything its predictions use."""

    backbone: str
    tasks: list[str]


class Learner(Protocol):
    """Learns tasks in sequence; task ``k`` is the k-th task passed to :meth:`learn`.

    Evaluation tokenizes with ``backbone`` and batches by ``trainer`` settings on ``device``.
    """

    backbone: Backbone
    trainer: TrainerConfig
    device: torch.device
    pad_id: int

    def learn(self, task: Task, on_loss: LossCallback | None = None) -> LearnReport: ...

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Label index (within each example's routed task) for every example."""
        ...

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Labels and their confidence, each example through the adapter and head of its ``task_ids`` entry."""
        ...

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean",
                 layers: tuple[int, ...] = (-1,)) -> torch.Tensor:
        """Pooled features of the backbone *without* any adapter: what learned routers look at."""
        ...

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far, each counted once (shared weights are not summed per task)."""
        ...

    def fingerprints(self) -> Fingerprints:
        """Digests of every tensor predictions depend on (equal digest = equal predictions)."""
        ...

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the state of already learned ``tasks`` written by :meth:`save` (for resuming)."""
        ...

    def save(self, directory: Path) -> list[Path]:
        """Write the learned state (one file per task where possible) and return the files."""
        ...


def check_router(learner: Any, router: Any, where: str = "learner") -> None:
    """Refuse a learned router on a learner that declares, in ``router_limit``, why it cannot serve one.

    A learner without ``router_limit`` (or with None) serves every router. ``where`` names the learner
    in the one-line error, e.g. ``learner=joint``.
    """
    limit = getattr(learner, "router_limit", None)
    if limit and getattr(router, "learned", False):
        raise ContinualError(f"{where} {limit}: use router=oracle")


def digest(*modules: nn.Module, prefix: str = "") -> str:
    """blake2b over the names and raw bytes of every tensor in ``modules``."""
    hashed = hashlib.blake2b(prefix.encode(), digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            hashed.update(name.encode())
            hashed.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return hashed.hexdigest()


def oracle_accuracy(learner: Learner, k: int, texts: Sequence[str], labels) -> float:
    """Accuracy of task ``k``'s prediction path on labelled texts, every text given task ``k`` (``nan`` without texts)."""
    if len(texts) == 0:
        return float("nan")
    tokens = learner.backbone.tokenize(list(texts), learner.trainer.max_length)
    correct = 0
    batches = eval_batches([len(t) for t in tokens], learner.trainer.eval_batch_size)
    for idx, ids, mask in iter_padded(tokens, batches, learner.pad_id, learner.device):
        task_ids = torch.full((len(idx),), k, dtype=torch.long, device=learner.device)
        correct += int((learner.predict(ids, mask, task_ids).cpu().numpy() == labels[idx]).sum())
    return correct / len(texts)
