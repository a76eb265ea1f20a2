"""Shared-weight baselines on one expanding head: the class-incremental protocol the literature reports.

One set of shared weights (a single adapter on the frozen backbone, ``base=adapter``, or the whole
backbone, ``base=finetune``) and one linear head over every class seen so far: each new task adds its
classes as new rows of the head (a class of a shared label space is added once). Training is
cross-entropy over all classes seen so far, so nothing but the chosen technique protects old
classes:

* class-incremental (no task id): the argmax over every label seen so far (:class:`HeadRouter`);
* task-incremental (task id given): the same logits masked to the task's labels.

``method`` picks the technique (:mod:`continual.learners.techniques`): ``none`` (sequential
fine-tuning, or a shared adapter), ``er``, ``derpp``, ``lwf``, ``ewc``, ``agem``; :class:`JointConfig`
trains once on every task (the upper bound). Saved state: ``state_NN.safetensors`` after NN tasks
(shared weights, head, classes, the technique's memory or Fisher), the previous one kept until the
next is written; ``NN_<task>.safetensors`` carry each task's labels for ``predict``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from continual import files
from continual.adapters import AdapterBank, AdapterKind, describe
from continual.checks import check_number
from continual.errors import ContinualError
from continual.learners.adapter_files import task_file
from continual.learners.base import (
    Classified,
    Fingerprints,
    Head,
    LearnReport,
    LossCallback,
    Schedule,
    best_per_task,
    digest,
    freeze,
    oracle_score,
    task_seed,
    tokenize,
    within_tasks,
)
from continual.learners.head_init import HEAD_INITS, Examples, start_head
from continual.learners.memory import MemoryConfig
from continual.learners.techniques import (
    AGEM,
    EWC,
    DarkReplay,
    DerppConfig,
    Distillation,
    EWCConfig,
    LwfConfig,
    NoTechnique,
    Replay,
    Technique,
    options,
)
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig, fit, pad, train_batches
from continual.streams import Task

log = logging.getLogger(__name__)

BASES = ("adapter", "finetune")
METHODS = ("none", "er", "derpp", "lwf", "ewc", "agem")
WITH_MEMORY = ("er", "derpp", "agem")


@dataclass(frozen=True)
class SingleHeadConfig:
    """Options of :class:`SingleHeadLearner` (``learner=seq_finetune|shared_adapter|replay|derpp|lwf|ewc|agem``).

    ``base``: ``finetune`` (the whole backbone at ``backbone_lr``, the head at the trainer's lr) or
    ``adapter`` (one adapter shared by all tasks, frozen backbone); ``method``: the technique; its
    options in ``memory`` (er, derpp, agem: the memory size counts in the run's stored bytes),
    ``derpp``, ``lwf`` or ``ewc``; ``head_dropout`` in [0, 1). ``head_init``: where a task's new rows of the
    head start: fitted on the task's examples of those classes through today's shared weights before training
    (``probe``, the default: its penalty chosen on validation; or ``lda``: see :mod:`continual.learners.head_init`),
    or at random (the plain recipe; measured weaker for every technique, docs/results.md); rows of classes
    already seen stay as trained.
    """

    base: str = "finetune"
    backbone_lr: float = 5e-5
    method: str = "none"
    memory: Any = None
    derpp: Any = None
    lwf: Any = None
    ewc: Any = None
    head_dropout: float = 0.1
    head_init: str = "probe"
    progress: bool = True

    head = Head.ALL_SEEN
    schedule = Schedule.EACH_TASK

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ContinualError(f"learner.base must be one of {list(BASES)}, got {self.base!r}")
        if self.method not in METHODS:
            raise ContinualError(f"learner.method must be one of {list(METHODS)}, got {self.method!r}")
        if (
            isinstance(self.backbone_lr, bool)
            or not isinstance(self.backbone_lr, (int, float))
            or not math.isfinite(self.backbone_lr)
            or self.backbone_lr <= 0
        ):
            raise ContinualError(f"learner.backbone_lr must be a positive number, got {self.backbone_lr!r}")
        check_number(self.head_dropout, "learner.head_dropout", low=0, high=1, below=True)
        if self.head_init not in HEAD_INITS:
            raise ContinualError(f"learner.head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")
        memory = (
            self.memory
            if isinstance(self.memory, MemoryConfig)
            else MemoryConfig.from_mapping(self.memory or {})
            if self.method in WITH_MEMORY or self.memory
            else None
        )
        object.__setattr__(self, "memory", memory)
        for name, cls in (("derpp", DerppConfig), ("lwf", LwfConfig), ("ewc", EWCConfig)):
            value = getattr(self, name)
            if not isinstance(value, cls):
                object.__setattr__(self, name, options(cls, value, f"learner.{name}"))

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> SingleHeadLearner:
        return SingleHeadLearner(backbone, adapter, trainer, self, seed)

    def describe(self) -> str:
        """The options that decide what the saved state means (checked when it is loaded)."""
        fields = {
            "base": self.base,
            "method": self.method,
            "schedule": self.schedule.value,
            "memory": asdict(self.memory) if self.memory is not None else None,
        }
        return json.dumps(fields)


@dataclass(frozen=True)
class JointConfig(SingleHeadConfig):
    """``learner=joint``: the shared weights and head trained once on every task (the upper bound)."""

    schedule = Schedule.ALL_AT_END

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method != "none":
            raise ContinualError("learner=joint sees every task at once: it takes no method (method=none)")


def technique_for(config: SingleHeadConfig, shared: Sequence[tuple[str, nn.Parameter]], seed: int) -> Technique:
    if config.method == "er":
        return Replay(config.memory, seed)
    if config.method == "agem":
        return AGEM(config.memory, seed)
    if config.method == "derpp":
        return DarkReplay(config.memory, config.derpp, seed)
    if config.method == "lwf":
        return Distillation(config.lwf)
    if config.method == "ewc":
        return EWC(config.ewc, shared, seed)
    return NoTechnique()


class SingleHeadLearner:
    """Shared weights and one expanding head over every class seen so far; a technique against forgetting."""

    head = Head.ALL_SEEN

    def __init__(
        self,
        backbone: Backbone,
        adapter: AdapterKind,
        trainer: TrainerConfig,
        config: SingleHeadConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or SingleHeadConfig()
        self.schedule = self.config.schedule
        self.backbone, self.trainer, self.adapter_config, self.seed = backbone, trainer, adapter, seed
        self.device = trainer.torch_device()
        self.bank: AdapterBank | None = None
        if self.config.base == "adapter":
            torch.manual_seed(task_seed(seed))  # the shared adapter's initial weights depend on the run seed only
            self.bank = AdapterBank(backbone, adapter)
            self.bank.add()
            self.bank.to(self.device)
        frozen = self.config.base == "adapter"  # only a frozen backbone is held in a lower precision
        computed = trainer.frozen_dtype(self.device)  # what the backbone computes in: bf16 under bf16, else fp32
        self.backbone.place(self.device, computed if frozen else torch.float32, computed)
        self.shared: nn.Module = self.bank.adapters[0] if self.bank is not None else backbone.model
        self.classifier: nn.Linear | None = None
        self.dropout = nn.Dropout(self.config.head_dropout)
        self.classes: list[str] = []  # every class seen so far, in head order (Task.classes keys)
        self.task_classes: list[np.ndarray] = []  # per task: the head row of each of its labels
        self.tasks: list[Task] = []
        self.technique = technique_for(self.config, list(self.shared.named_parameters()), seed)
        self._memo: dict[bytes, torch.Tensor] = {}  # evaluation features per text, until the weights move

    # --- the head ---------------------------------------------------------------------------------------------
    def _add_task(self, task: Task) -> int:
        """Register ``task``; new classes become new rows of the head (seeded by run seed and task index)."""
        k = len(self.tasks)
        torch.manual_seed(task_seed(self.seed, k))
        new = [c for c in dict.fromkeys(task.classes) if c not in self.classes]
        if new:
            grown = nn.Linear(self.backbone.hidden_size, len(self.classes) + len(new)).to(self.device)
            if self.classifier is not None:
                with torch.no_grad():
                    grown.weight[: len(self.classes)] = self.classifier.weight
                    grown.bias[: len(self.classes)] = self.classifier.bias
            self.classifier = grown
            self.classes += new
        self.task_classes.append(np.array([self.classes.index(c) for c in task.classes], dtype=np.int64))
        self.tasks.append(task)
        return k

    def _head(self) -> nn.Linear:
        if self.classifier is None:
            raise ContinualError("the learner has learned no task yet: its head has no class")
        return self.classifier

    # --- forward passes ---------------------------------------------------------------------------------------
    def _features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features through the shared weights (the one adapter, if any, on every example)."""
        routed = self.bank.routed([(0, 0, input_ids.shape[0])]) if self.bank is not None else nullcontext()
        with routed, self.trainer.autocast(self.device):
            return self.backbone(input_ids, attention_mask).float()

    def _forward(self, tokens: list[list[int]]) -> torch.Tensor:
        """Training forward (dropout as the modules' mode says): logits over every class seen so far."""
        ids, mask = pad(tokens, self.backbone.pad_id, self.device)
        return self._head()(self.dropout(self._features(ids, mask)))

    @torch.no_grad()
    def _eval_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Features for evaluation, remembered per text until the next task changes the weights: routing and
        labelling the same test set then cost one pass, not three."""
        lengths = attention_mask.sum(1).tolist()
        keys = [input_ids[i, :n].cpu().numpy().tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self._memo]
        if missing:
            rows = torch.as_tensor(missing, device=input_ids.device)
            for i, feature in zip(missing, self._features(input_ids[rows], attention_mask[rows])):
                self._memo[keys[i]] = feature
        return torch.stack([self._memo[key] for key in keys])

    @torch.no_grad()
    def _pooled(self, tokens: list[list[int]]) -> torch.Tensor:
        """Today's features of ``tokens`` ``[n, hidden]`` on the CPU, without gradients or dropout, batched by
        length. The modules must be in eval mode (they are between tasks)."""
        order = np.argsort([len(t) for t in tokens], kind="stable")
        out = torch.zeros(len(tokens), self.backbone.hidden_size)
        for start in range(0, len(order), self.trainer.eval_batch_size):
            idx = order[start : start + self.trainer.eval_batch_size]
            ids, mask = pad([tokens[i] for i in idx], self.backbone.pad_id, self.device)
            out[torch.as_tensor(idx)] = self._features(ids, mask).cpu()
        return out

    @torch.no_grad()
    def _record(self, tokens: list[list[int]]) -> torch.Tensor:
        """Today's logits on ``tokens``, without gradients or dropout (what LwF keeps before a task)."""
        if self.classifier is None:
            return torch.zeros(len(tokens), 0)
        return self._head()(self._pooled(tokens).to(self.device)).cpu()

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Task-incremental: each example's logits masked to its task's labels (negative task id: no label)."""
        return within_tasks(self._head()(self._eval_features(input_ids, attention_mask)), task_ids, self.task_classes)

    @torch.no_grad()
    def task_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per task, the best logit among its labels: the argmax task owns the argmax label (class-incremental)."""
        return best_per_task(self._head()(self._eval_features(input_ids, attention_mask)), self.task_classes)

    @torch.no_grad()
    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str = "mean",
        layers: tuple[int, ...] | None = (-1,),
    ) -> torch.Tensor:
        """Pooled backbone features without the shared adapter (they move with fine-tuning)."""
        plain = self.bank.routed(()) if self.bank is not None else nullcontext()
        with plain, self.trainer.autocast(self.device):
            return self.backbone.encode(input_ids, attention_mask, pooling, layers).float()

    # --- learning ---------------------------------------------------------------------------------------------
    def _param_groups(self) -> list[dict[str, Any]]:
        shared, head = list(self.shared.parameters()), list(self._head().parameters())
        if self.config.base == "finetune":
            return [{"params": shared, "lr": self.config.backbone_lr}, {"params": head}]
        return [{"params": shared + head}]

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """The step's tasks join the head; shared weights and head train on their union, as the technique says."""
        tokens = [ids for task in tasks for ids in tokenize(self, task.train.texts)]
        self.technique.start_task(self._record, tokens)
        seen = len(self.classes)
        indexed = [(self._add_task(task), task) for task in tasks]
        targets = np.concatenate([self.task_classes[k][task.train.labels] for k, task in indexed])
        if self.config.head_init != "random" and len(self.classes) > seen:
            self._start_rows(seen, indexed, (self._pooled(tokens), torch.as_tensor(targets)))
        k, cfg = indexed[-1][0], self.trainer
        rng = np.random.default_rng([self.seed, k])
        epochs = [train_batches([len(t) for t in tokens], cfg.batch_size, rng) for _ in range(cfg.epochs)]
        last: dict[str, Any] = {}

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            batch = [tokens[i] for i in idx]
            y = targets[idx]
            extra = self.technique.replayed(len(idx), rng)
            if extra is not None:
                batch, y = batch + extra[0], np.concatenate([y, extra[1]])
            logits = self._forward(batch)
            loss = nn.functional.cross_entropy(logits, torch.as_tensor(y, device=self.device))
            penalty = self.technique.penalty(self._forward, (batch, y), logits, idx, rng)
            last.update(batch=([tokens[i] for i in idx], targets[idx]), logits=logits[: len(idx)])
            return loss if penalty is None else loss + penalty

        freeze(self.backbone, self.shared, self._head())  # only what `fit` enables trains
        params = [p for group in self._param_groups() for p in group["params"]]
        fitted = fit(
            self._param_groups(),
            epochs,
            loss_of,
            cfg,
            indexed[-1][1].name if len(tasks) == 1 else "joint",
            modules=(self.backbone, self.dropout),
            progress=self.config.progress,
            on_loss=on_loss,
            after_backward=lambda: self.technique.after_backward(self._forward, params, rng),
            after_step=lambda: self.technique.after_step(last["batch"], last["logits"], rng),
        )
        self._memo.clear()
        self.technique.end_task(k, (tokens, targets), lambda i: self._example_loss(tokens[i], int(targets[i])))
        return self._report(indexed, tokens, fitted)

    def _start_rows(self, first: int, indexed: list[tuple[int, Task]], train: Examples) -> None:
        """The head's rows from ``first`` on (the step's new classes) start as ``head_init`` says, fitted on the
        ``train`` examples (today's features, head rows) of those classes; the step's validation texts choose a
        probe's penalty."""
        texts = [text for _, task in indexed for text in task.validation.texts]
        rows = [self.task_classes[k][task.validation.labels] for k, task in indexed]
        held_out = (self._pooled(tokenize(self, texts)), torch.as_tensor(np.concatenate(rows))) if texts else None
        fresh = nn.Linear(self.backbone.hidden_size, len(self.classes) - first)
        new_train, held = _from_row(first, train), None if held_out is None else _from_row(first, held_out)
        if len(new_train[1]) == 0:
            return  # no training example of a new class: the rows stay as drawn
        l2 = start_head(fresh, self.config.head_init, new_train, held)
        with torch.no_grad():
            self._head().weight[first:].copy_(fresh.weight)
            self._head().bias[first:].copy_(fresh.bias)
        validated = held is not None and len(held[1]) > 0
        how = "LDA" if l2 is None else f"a probe with L2 {l2:g}{' (chosen on validation)' if validated else ''}"
        log.info("new head rows %d-%d started from %s", first, len(self.classes) - 1, how)

    def _example_loss(self, tokens: list[int], target: int) -> torch.Tensor:
        logits = self._forward([tokens])
        return nn.functional.cross_entropy(logits, torch.as_tensor([target], device=self.device))

    def _report(self, indexed: list[tuple[int, Task]], tokens: list[list[int]], fitted: Any) -> LearnReport:
        sizes = np.array([len(t.validation) for _, t in indexed])
        accuracies = [oracle_score(self, k, t, t.validation) for k, t in indexed]
        val_acc = float(np.dot(np.nan_to_num(accuracies), sizes) / sizes.sum()) if sizes.sum() else float("nan")
        name = indexed[0][1].name if len(indexed) == 1 else "joint"
        trainable = sum(p.numel() for group in self._param_groups() for p in group["params"])
        examples = len(tokens) * self.trainer.epochs
        return LearnReport(name, fitted.steps, examples, fitted.seconds, fitted.final_loss, val_acc, trainable)

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far, each counted once: the shared weights and the head."""
        return sum(p.numel() for p in self.shared.parameters()) + sum(p.numel() for p in self._head().parameters())

    def fingerprints(self) -> Fingerprints:
        """Every task is predicted through the shared weights and the one head: one digest for all of them."""
        backbone = digest(self.backbone)
        shared = digest(*([self.bank] if self.bank is not None else []), self._head(), prefix=backbone)
        return Fingerprints(backbone, [shared] * len(self.tasks))

    # --- state on disk ----------------------------------------------------------------------------------------
    def _metadata(self, tasks: Sequence[Task]) -> dict[str, str]:
        return {
            "learner": self.config.describe(),
            "backbone": self.backbone.name,
            "adapter": describe(self.adapter_config) if self.config.base == "adapter" else "",
            "tasks": json.dumps([t.name for t in tasks]),
            "classes": json.dumps([list(t.classes) for t in tasks]),
        }

    def save(self, directory: Path) -> list[Path]:
        """Per-task label files (each written once: a task's labels never change, and a rewritten file's bytes
        would differ from the hash the checkpoint recorded), then ``state_NN`` (shared weights, head,
        technique); older states are dropped."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [task_file(directory, k, t.name) for k, t in enumerate(self.tasks)]
        for k, (t, path) in enumerate(zip(self.tasks, paths)):
            if not path.is_file():
                files.save_tensors(path, {}, self._task_metadata(k, t))
        tensors = {
            **files.with_prefix("shared.", self.shared.state_dict()),
            **files.with_prefix("head.", self._head().state_dict()),
            **files.with_prefix("technique.", self.technique.state_dict()),
        }
        n = len(self.tasks)
        paths.append(files.save_tensors(state_path(directory, n), tensors, self._metadata(self.tasks)))
        for old in directory.glob("state_*.safetensors"):
            if old.stem[len("state_") :].isdigit() and int(old.stem[len("state_") :]) < n - 1:
                old.unlink()
        return paths

    def _task_metadata(self, k: int, task: Task) -> dict[str, str]:
        labels, classes = json.dumps(list(task.labels)), json.dumps(list(task.classes))
        return {
            "task": task.name,
            "index": str(k),
            "labels": labels,
            "classes": classes,
            "backbone": self.backbone.name,
        }

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the state after ``tasks`` (stream order) from :meth:`save`, memory and Fisher included."""
        if not tasks:
            return
        tensors = files.read_checked(
            state_path(directory, len(tasks)),
            self._metadata(tasks),
            hint="a learner's state only loads into the learner, backbone and tasks it was saved for",
        )
        for task in tasks:
            self._add_task(task)
        self.shared.load_state_dict(files.strip_prefix("shared.", tensors))
        self._head().load_state_dict(files.strip_prefix("head.", tensors))
        self.technique.load_state_dict(files.strip_prefix("technique.", tensors))
        freeze(self.shared, self._head())


def _from_row(first: int, examples: Examples) -> Examples:
    """The ``examples`` whose head row is ``first`` or later, their rows counted from ``first``."""
    features, rows = examples
    keep = rows >= first
    return features[keep], rows[keep] - first


def state_path(directory: Path, tasks: int) -> Path:
    """The learner's state after ``tasks`` tasks."""
    return directory / f"state_{tasks:02d}.safetensors"
