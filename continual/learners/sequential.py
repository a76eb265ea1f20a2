"""Shared-parameter baselines: one set of trainable weights for every task, one linear head per task.

``base=adapter`` trains a single bottleneck adapter on the frozen backbone, task after task;
``base=finetune`` fine-tunes the whole backbone (its weights at ``backbone_lr``, heads at the
trainer's ``lr``). Every task keeps its own head, so evaluation is task-incremental through the
router's task id exactly as for :class:`AdapterPerTask`; but the shared weights move with every
new task, so older tasks can be forgotten. Options make the classic baselines of one class:

* none: sequential fine-tuning / a shared adapter, the forgetting lower bounds;
* ``memory``: experience replay from a bounded episodic memory (:mod:`continual.learners.memory`);
* ``ewc``: elastic weight consolidation of the shared weights (:mod:`continual.learners.ewc`).

Because the shared weights change, every task's fingerprint digests them, and the memoised
evaluation recomputes old tasks after each step. Saved state: see :mod:`continual.learners.shared_state`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from continual.adapters import AdapterBank, AdapterKind
from continual.backbone import Backbone
from continual.errors import ContinualError
from continual.learners import shared_state
from continual.learners.adapter_per_task import check_dropout
from continual.learners.base import (
    Classified,
    Fingerprints,
    LearnReport,
    LossCallback,
    Schedule,
    digest,
    freeze,
    oracle_accuracy,
    task_seed,
)
from continual.learners.ewc import EWC, EWCConfig
from continual.learners.memory import EpisodicMemory, MemoryConfig
from continual.streams import Task
from continual.training import Fitted, TrainerConfig, fit, pad, train_batches

BASES = ("adapter", "finetune")
# feature routers read the backbone's features, which fine-tuning moves after every task
FINETUNE_LIMIT = "fine-tunes the backbone, and learned routers need it frozen"


def _option(value: Any, cls: Any) -> Any:
    """A config dataclass from itself or from its config node (a mapping), or None when absent."""
    return value if value is None or isinstance(value, cls) else cls.from_mapping(value)


@dataclass(frozen=True)
class SequentialConfig:
    """Options of :class:`SequentialLearner` (``learner=seq_finetune|shared_adapter|replay|ewc``).

    ``base``: ``adapter`` (one shared adapter on the frozen backbone) or ``finetune`` (the whole
    backbone, at ``backbone_lr``); ``memory``: replay options (:class:`MemoryConfig`), or None;
    ``ewc``: EWC options (:class:`EWCConfig`), or None; ``head_dropout`` in [0, 1).
    """

    base: str = "adapter"
    backbone_lr: float = 5e-5
    memory: MemoryConfig | None = None
    ewc: EWCConfig | None = None
    head_dropout: float = 0.1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ContinualError(f"learner.base must be one of {list(BASES)}, got {self.base!r}")
        if (
            isinstance(self.backbone_lr, bool)
            or not isinstance(self.backbone_lr, (int, float))
            or not math.isfinite(self.backbone_lr)
            or self.backbone_lr <= 0
        ):
            raise ContinualError(f"learner.backbone_lr must be a positive number, got {self.backbone_lr!r}")
        check_dropout(self.head_dropout, "learner.head_dropout")
        object.__setattr__(self, "backbone_lr", float(self.backbone_lr))
        object.__setattr__(self, "memory", _option(self.memory, MemoryConfig))
        object.__setattr__(self, "ewc", _option(self.ewc, EWCConfig))

    @property
    def router_limit(self) -> str | None:
        """Why learned routers cannot serve this learner, or None."""
        return FINETUNE_LIMIT if self.base == "finetune" else None

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> SequentialLearner:
        return SequentialLearner(
            backbone,
            adapter,
            trainer,
            self.base,
            self.backbone_lr,
            self.memory,
            self.ewc,
            self.head_dropout,
            seed,
            self.progress,
        )


@dataclass(frozen=True)
class Examples:
    """Tokenized training examples, their labels and the index of the task each belongs to."""

    tokens: list[list[int]]
    labels: np.ndarray
    tasks: np.ndarray


class SequentialLearner:
    """Shared weights (one adapter, or the whole backbone) trained task after task; a head per task."""

    schedule = Schedule.EACH_TASK

    def __init__(
        self,
        backbone: Backbone,
        adapter: AdapterKind,
        trainer: TrainerConfig,
        base: str = "adapter",
        backbone_lr: float = 5e-5,
        memory: Mapping[str, Any] | MemoryConfig | None = None,
        ewc: Mapping[str, Any] | EWCConfig | None = None,
        head_dropout: float = 0.1,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.config = SequentialConfig(base, backbone_lr, memory, ewc, head_dropout, progress)  # type: ignore[arg-type]
        memory_config, ewc_config = self.config.memory, self.config.ewc
        self.backbone = backbone
        self.trainer = trainer
        self.base = base
        self.backbone_lr = self.config.backbone_lr
        self.adapter_config = adapter
        self.seed = seed
        self.progress = progress
        self.device = trainer.torch_device()
        self.bank: AdapterBank | None = None
        if base == "adapter":
            torch.manual_seed(task_seed(seed))  # the shared adapter's initial weights depend on the run seed only
            self.bank = AdapterBank(backbone, adapter)
            self.bank.add()
            self.bank.to(self.device)
        self.backbone.to(self.device)
        self.shared: nn.Module = self.bank.adapters[0] if self.bank is not None else backbone.model
        self.heads = nn.ModuleList()
        self.dropout = nn.Dropout(head_dropout)
        self.tasks: list[Task] = []
        self.memory = EpisodicMemory(memory_config, seed) if memory_config is not None else None
        self.ewc = EWC(ewc_config, list(self.shared.named_parameters())) if ewc_config is not None else None

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far, each counted once: the shared weights and every head."""
        return sum(p.numel() for p in self.shared.parameters()) + sum(p.numel() for p in self.heads.parameters())

    @property
    def router_limit(self) -> str | None:
        """Why learned routers cannot serve this learner, or None."""
        return self.config.router_limit

    def _add_head(self, task: Task) -> int:
        k = len(self.tasks)
        # as in AdapterPerTask: a task's head, dropout masks and batches do not depend on what ran before,
        # so a resumed run draws exactly what an uninterrupted one would
        torch.manual_seed(task_seed(self.seed, k))
        self.heads.append(nn.Linear(self.backbone.hidden_size, len(task.labels)).to(self.device))
        self.tasks.append(task)
        return k

    def _examples(self, indexed: Sequence[tuple[int, Task]]) -> Examples:
        tokens: list[list[int]] = []
        for _, task in indexed:
            tokens += self.backbone.tokenize(list(task.train.texts), self.trainer.max_length)
        return Examples(
            tokens,
            np.concatenate([np.asarray(t.train.labels, np.int64) for _, t in indexed]),
            np.concatenate([np.full(len(t.train), k, np.int64) for k, t in indexed]),
        )

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features through the shared weights (the one adapter, if any, on every example)."""
        routed = self.bank.routed([(0, 0, input_ids.shape[0])]) if self.bank is not None else nullcontext()
        with routed, self.trainer.autocast(self.device):
            return self.backbone(input_ids, attention_mask).float()

    def _loss(self, tokens: list[list[int]], labels: np.ndarray, tasks: np.ndarray) -> torch.Tensor:
        """Mean cross-entropy of a batch that may mix tasks (each example through its own head), plus EWC's penalty."""
        ids, mask = pad(tokens, self.backbone.pad_id, self.device)
        features = self.dropout(self._encode(ids, mask))
        targets = torch.as_tensor(labels, device=self.device)
        total = features.new_zeros(())
        for k in np.unique(tasks).tolist():
            rows = torch.as_tensor(np.flatnonzero(tasks == k), device=self.device)
            total = total + nn.functional.cross_entropy(self.heads[k](features[rows]), targets[rows], reduction="sum")
        loss = total / len(labels)
        penalty = self.ewc.penalty() if self.ewc is not None else None
        return loss if penalty is None else loss + penalty

    def _train(
        self, name: str, pool: Examples, heads: set[int], on_loss: LossCallback | None
    ) -> tuple[Fitted, int, int]:
        """Fit the shared weights and ``heads`` on ``pool`` (+ replay): (fit result, trainable params, replayed)."""
        cfg = self.trainer
        rng = np.random.default_rng([self.seed, len(self.tasks) - 1])
        epochs = [train_batches([len(t) for t in pool.tokens], cfg.batch_size, rng) for _ in range(cfg.epochs)]
        memory = self.memory if self.memory is not None and len(self.memory) else None
        size = (memory.config.batch_size or cfg.batch_size) if memory is not None else 0
        # every batch of the new task travels with a fresh random batch of remembered examples (ER)
        batches = [[(b, memory.sample(size, rng) if memory is not None else b[:0]) for b in e] for e in epochs]
        if memory is not None:
            heads = heads | set(memory.tasks.tolist())  # replayed examples train their own (old) heads

        def loss_of(batch: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
            new, old = batch
            tokens = [pool.tokens[i] for i in new]
            labels, tasks = pool.labels[new], pool.tasks[new]
            if memory is not None and len(old):
                tokens += [memory.tokens[i] for i in old]
                labels, tasks = np.concatenate([labels, memory.labels[old]]), np.concatenate([tasks, memory.tasks[old]])
            return self._loss(tokens, labels, tasks)

        head_params = [p for k in sorted(heads) for p in self.heads[k].parameters()]
        shared = list(self.shared.parameters())
        groups: list[dict[str, Any]] = (
            [{"params": shared, "lr": self.backbone_lr}, {"params": head_params}]
            if self.base == "finetune"
            else [{"params": shared + head_params}]
        )
        freeze(self.backbone, self.shared, self.heads)  # only what `fit` enables trains; the rest stays as it is
        fitted = fit(
            groups,
            batches,
            loss_of,
            cfg,
            name,
            modules=(self.backbone, self.dropout),
            progress=self.progress,
            on_loss=on_loss,
        )
        trainable = sum(p.numel() for p in shared) + sum(p.numel() for p in head_params)
        return fitted, trainable, sum(len(old) for e in batches for _, old in e)

    def _consolidate(self, k: int, pool: Examples) -> None:
        """After task ``k``: EWC's Fisher on its training data, then its examples are offered to the memory."""
        if self.ewc is not None:
            n = self.ewc.config.fisher_samples
            chosen = np.random.default_rng([self.seed, k, 2]).permutation(len(pool.tokens))[: n or None]
            targets = torch.as_tensor(pool.labels, device=self.device)

            def loss_of(i: int) -> torch.Tensor:
                ids, mask = pad([pool.tokens[chosen[i]]], self.backbone.pad_id, self.device)
                return nn.functional.cross_entropy(self.heads[k](self._encode(ids, mask)), targets[chosen[i : i + 1]])

            self.ewc.consolidate(len(chosen), loss_of)
        if self.memory is not None:
            self.memory.add(k, pool.tokens, pool.labels)

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """A new head for the step's task; the shared weights, that head (and replayed tasks' heads) train on it."""
        (task,) = tasks
        k = self._add_head(task)
        pool = self._examples([(k, task)])
        fitted, trainable, replayed = self._train(task.name, pool, {k}, on_loss)
        self._consolidate(k, pool)
        val_acc = oracle_accuracy(self, k, task.validation.texts, task.validation.labels)
        return LearnReport(
            task.name,
            fitted.steps,
            len(pool.tokens) * self.trainer.epochs + replayed,
            fitted.seconds,
            fitted.final_loss,
            val_acc,
            trainable,
        )

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """One pass through the shared weights for the whole batch, then each example through its task's head."""
        features = self._encode(input_ids, attention_mask)
        task_ids = task_ids.to(self.device)
        out = Classified.empty(input_ids.shape[0], self.device)
        for k in torch.unique(task_ids[task_ids >= 0]).tolist():  # a negative id means "no task": no prediction
            rows = task_ids == k
            out.fill(rows, self.heads[k](features[rows]))
        return out

    @torch.no_grad()
    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str = "mean",
        layers: tuple[int, ...] = (-1,),
    ) -> torch.Tensor:
        """Pooled backbone features without the shared adapter: what learned routers read."""
        plain = self.bank.routed(()) if self.bank is not None else nullcontext()  # no adapter: the backbone alone
        with plain, self.trainer.autocast(self.device):
            return self.backbone.encode(input_ids, attention_mask, pooling, layers).float()

    def fingerprints(self) -> Fingerprints:
        """Every task's digest covers the shared weights it is predicted through, so old tasks are re-evaluated."""
        backbone = digest(self.backbone)
        shared = digest(self.bank, prefix=backbone) if self.bank is not None else backbone
        return Fingerprints(backbone, [digest(head, prefix=shared) for head in self.heads])

    def save(self, directory: Path) -> list[Path]:
        """Per-task head files plus ``state_NN.safetensors`` (shared weights, heads, memory, Fisher)."""
        return shared_state.save(self, directory)

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the state after ``tasks`` (in stream order) from :meth:`save`, memory and Fisher included."""
        shared_state.load(self, directory, tasks)
