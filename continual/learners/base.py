"""The learner protocol: what the run loop, evaluation and prediction need from a way of learning tasks.

A new learner is a class that provides every member of :class:`Learner` and a frozen config
dataclass that provides :class:`LearnerConfig` (it validates its fields in ``__post_init__``, so a bad
value is one error line before any model loads, and it builds the learner once the backbone is there).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from continual.adapters import AdapterKind
from continual.model.backbone import Backbone
from continual.model.outputs import Classified
from continual.model.training import TrainerConfig, eval_batches, iter_padded
from continual.streams import Split, Task
from continual.streams.kinds import Encoded, Outputs, TaskKind
from continual.streams.kinds.tokens import word_tags

log = logging.getLogger(__name__)
LossCallback = Callable[[int, float], None]  # (optimizer step within the step's training, loss)


class Head(Enum):
    """How a learner's heads cover the labels, and so how it is evaluated without task ids."""

    PER_TASK = "one module and head per task"  # a router chooses the task (class-IL), or the oracle (task-IL)
    ALL_SEEN = "one head over all labels seen so far"  # argmax over all (class-IL) or the task's (task-IL)


class Schedule(Enum):
    """When the run loop hands a learner its tasks."""

    EACH_TASK = "each_task"  # task i at step i: the continual setting
    ALL_AT_END = "all_at_end"  # every task at once, at the last step: joint training, the upper bound


@dataclass(frozen=True)
class Step:
    """One step of a run: learn ``tasks`` (stream indices), then fill row ``row`` of the accuracy matrix."""

    row: int
    tasks: range


def steps(schedule: Schedule, num_tasks: int) -> list[Step]:
    """The steps a learner with ``schedule`` takes through a stream of ``num_tasks`` tasks."""
    if schedule is Schedule.ALL_AT_END:
        return [Step(num_tasks - 1, range(num_tasks))]
    return [Step(i, range(i, i + 1)) for i in range(num_tasks)]


@dataclass(frozen=True)
class LearnReport:
    """What one step of learning cost and achieved (``task`` names the task, or ``joint``)."""

    task: str
    steps: int
    examples: int
    seconds: float
    final_loss: float
    val_acc: float
    trainable_params: int
    kept_epoch: int | None = None  # learner.keep=best: the epoch whose end the weights are from (0: the start)
    probe_l2: float | None = None  # learner.head_init=probe: the L2 penalty of the probe its head started as

    @property
    def samples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Fingerprints:
    """Digests of the shared (backbone) tensors and, per learned task, of everything its predictions use."""

    backbone: str
    tasks: list[str]


class Learner(Protocol):
    """Learns tasks in stream order; task ``k`` is the k-th task it has been given.

    What a new learner must provide (and nothing else is used):

    * ``schedule``: :class:`Schedule` — when the loop calls :meth:`learn` and with which tasks.
    * ``head``: :class:`Head` — ``PER_TASK`` learners are routed by the configured router;
      ``ALL_SEEN`` learners (one expanding head) route themselves and must also provide
      :meth:`SingleHead.task_scores`.
    * ``backbone``, ``trainer``, ``device``: how test texts are tokenized, batched and placed, exactly
      as for training (see :func:`padded_batches`).
    * :meth:`learn`, :meth:`classify`, :meth:`features`: learning and inference.
    * :meth:`fingerprints`: digests that change whenever a task's predictions could change; the
      evaluation memo recomputes a task only when its digest moved.
    * :meth:`trained_parameters`, :meth:`save`, :meth:`load`: accounting and resumable state.
    """

    schedule: Schedule
    head: Head
    backbone: Backbone
    trainer: TrainerConfig
    device: torch.device

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """Learn ``tasks`` (one task per step for ``EACH_TASK``; all of them for ``ALL_AT_END``)."""
        ...

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Each example through the module and head of its ``task_ids`` entry (negative: no task, label -1)."""
        ...

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str = "mean",
        layers: tuple[int, ...] | None = (-1,),
    ) -> torch.Tensor:
        """Pooled features of the backbone *without* any adapter: what learned routers look at."""
        ...

    def fingerprints(self) -> Fingerprints:
        """Digests of every tensor predictions depend on (equal digest = equal predictions)."""
        ...

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far, each counted once (shared weights are not summed per task)."""
        ...

    def save(self, directory: Path) -> list[Path]:
        """Write the learned state (one file per task where possible, atomically) and return every file kept."""
        ...

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore, into a fresh learner, the state after ``tasks`` (stream order) written by :meth:`save`."""
        ...


class SingleHead(Learner, Protocol):
    """A learner with one head over every label seen so far (``head = Head.ALL_SEEN``)."""

    def task_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, tasks]``: for each task learned, the head's best score among that task's labels."""
        ...


class LearnerConfig(Protocol):
    """A learner's options, validated on construction; what the run needs before any model is loaded."""

    @property
    def head(self) -> Head:
        """As :attr:`Learner.head`, known from the options alone (the router is chosen before the backbone loads)."""
        ...

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> Learner: ...


def task_seed(*key: int) -> int:
    """A torch seed derived from ``key`` (run seed, task index, ...): independent of whatever ran before.

    Reseeding per task makes a task's initialisation, dropout masks and batches independent of what
    ran before it, so a resumed run draws exactly what an uninterrupted one would.
    """
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def digest(*modules: nn.Module, prefix: str = "") -> str:
    """blake2b over the names and raw bytes of every tensor in ``modules``."""
    hashed = hashlib.blake2b(prefix.encode(), digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            hashed.update(name.encode())
            hashed.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())  # its buffer: no copy
    return hashed.hexdigest()


def padded_batches(
    learner: Learner, tokens: Sequence[Sequence[int]], subset: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(indices, input_ids, attention_mask) over ``tokens`` (or its ``subset``), length-sorted, on the device."""
    subset = np.arange(len(tokens)) if subset is None else subset
    order = eval_batches([len(tokens[int(i)]) for i in subset], learner.trainer.eval_batch_size)
    pad_id = learner.backbone.pad_id
    return iter_padded(tokens, [subset[b] for b in order], pad_id, learner.device)


def tokenize(learner: Learner, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of ``texts`` as the learner trains on them (its backbone's tokenizer, its max length)."""
    return learner.backbone.tokenize(list(texts), learner.trainer.max_length)


def encode(learner: Learner, kind: TaskKind, texts: Sequence[str], what: str) -> Encoded:
    """:func:`tokenize` as a task of ``kind`` reads its texts (a tagger: word-aligned, with word starts)."""
    return kind.encode(learner.backbone, texts, learner.trainer.max_length, what)


def run_head(learner: Learner, encoded: Encoded, k: int, outputs: Outputs, todo: np.ndarray) -> None:
    """Fill ``outputs`` at indices ``todo`` with task ``k``'s labels and certainty (and, for texts encoded with
    word starts, its tag per word)."""
    tokens, starts = encoded
    for idx, ids, mask in padded_batches(learner, tokens, todo) if len(todo) else ():
        got = learner.classify(ids, mask, torch.full((len(idx),), k, dtype=torch.long, device=learner.device))
        outputs.labels[idx] = got.labels.cpu().numpy()
        outputs.certainty[idx] = got.certainty.cpu().numpy()
        if starts is not None:
            scores = got.tag_scores.cpu().numpy()
            for row, i in enumerate(idx):
                outputs.tags[i] = word_tags(scores[row], starts[i])[0]


def oracle_score(learner: Learner, k: int, task: Task, split: Split) -> float:
    """Task ``k``'s score on a labelled ``split`` of ``task``, each text given task ``k``: its kind's score
    (accuracy, entity micro F1, ...) by the task's own labels; ``nan`` without texts."""
    if len(split) == 0:
        return float("nan")
    outputs = Outputs.empty(len(split))
    run_head(learner, encode(learner, task.kind, split.texts, f"task '{task.name}'"), k, outputs, np.arange(len(split)))
    own = {k: np.arange(len(task.labels))}
    return task.kind.score(task, split, k, np.full(len(split), k), lambda _k, _rows: outputs, own).value


def within_tasks(logits: torch.Tensor, task_ids: torch.Tensor, task_classes: Sequence[np.ndarray]) -> Classified:
    """Task-incremental answers of one head over all classes: each row's logits restricted to its task's
    columns (``task_classes[k]``; a negative task id: no label)."""
    task_ids = task_ids.to(logits.device)
    out = Classified.empty(logits.shape[0], logits.device)
    for k in torch.unique(task_ids[task_ids >= 0]).tolist():
        rows = task_ids == k
        out.fill(rows, logits[rows][:, torch.as_tensor(task_classes[k], device=logits.device)])
    return out


def best_per_task(logits: torch.Tensor, task_classes: Sequence[np.ndarray]) -> torch.Tensor:
    """``[n, tasks]``: each task's best logit among its columns; the argmax task owns the argmax class."""
    return torch.stack([logits[:, torch.as_tensor(c, device=logits.device)].max(1).values for c in task_classes], 1)


def freeze(*modules: nn.Module) -> None:
    """No gradients for any parameter of ``modules`` (training turns on exactly what it trains)."""
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
