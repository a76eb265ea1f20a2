"""The product: a fresh adapter and classification head per task on a frozen backbone.

Only the newest adapter and head receive gradients; the backbone and every earlier adapter and head
are frozen, so a task's predictions (under the oracle router) can never change after it is learned.

Knowledge transfer without giving up that isolation (``transfer``):

* ``similar``: the new adapter starts as a copy of the earlier adapter whose task is most similar,
  by cosine similarity of task centroids (the mean frozen, mean-pooled backbone feature of a task's
  training texts: the statistic prototype routers keep per class, pooled per task);
* ``fusion``: AdapterFusion-style (Pfeiffer et al. 2021): the new task's adapter output is its own
  update plus the frozen earlier adapters' updates, mixed per site by learned softmax weights
  (static per site, not input-dependent attention as in the paper), trained with the new adapter.

Forward transfer is measured against the independently initialised adapter (``transfer=none``, same
seed) as the reference: FWT_j = R[j, j] - R_none[j, j] (see :func:`continual.metrics.forward_transfer`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from continual import files
from continual.adapters import AdapterBank, AdapterKind, describe, segments_for
from continual.adapters import bank as bank_module
from continual.adapters.resident import ResidentSet
from continual.backbone import TOKEN_STATES, Backbone, pool
from continual.cache import PrefixCache
from continual.errors import ContinualError
from continual.learners.base import (
    Classified,
    Fingerprints,
    Head,
    LearnReport,
    LossCallback,
    Schedule,
    digest,
    freeze,
    oracle_score,
    padded_batches,
    task_seed,
    tokenize,
    tokenize_words,
)
from continual.streams import Split, Task
from continual.streams.task import SEQUENCE, TOKENS
from continual.training import TrainerConfig, fit, pad, pad_targets, token_targets, train_batches

log = logging.getLogger(__name__)
TRANSFERS = ("none", "similar", "fusion")
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class AdapterPerTaskConfig:
    """Options of :class:`AdapterPerTask` (``learner=adapter_per_task``).

    ``head_dropout``: dropout on the pooled features before each task's linear head, in [0, 1).
    ``transfer``: ``none`` | ``similar`` | ``fusion`` (see the module docstring).
    ``max_resident_mb``: adapters loaded from a run's files (predict, serving, resume) stay in memory up
    to this many megabytes; the others are read back from their files when routed to (LRU, see
    :mod:`continual.adapters.resident`). None: all resident.
    ``save_dtype``: what adapter files hold: ``float32``, or ``float16`` / ``bfloat16`` (half the bytes, for
    long streams of small tasks). Below float32 each task's weights are rounded to it once trained, so the
    model that is evaluated is the one its file holds and a resumed run continues from the same weights.
    """

    head_dropout: float = 0.1
    transfer: str = "none"
    progress: bool = True
    max_resident_mb: float | None = None
    save_dtype: str = "float32"

    head = Head.PER_TASK  # per-task modules on a frozen backbone: a router chooses among them

    def __post_init__(self) -> None:
        check_dropout(self.head_dropout, "learner.head_dropout")
        budget = self.max_resident_mb
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0):
            raise ContinualError(f"learner.max_resident_mb must be a number of megabytes >= 0 or null, got {budget!r}")
        if self.transfer not in TRANSFERS:
            raise ContinualError(f"learner.transfer must be one of {list(TRANSFERS)}, got {self.transfer!r}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ContinualError(f"learner.save_dtype must be one of {list(SAVE_DTYPES)}, got {self.save_dtype!r}")

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> AdapterPerTask:
        return AdapterPerTask(backbone, adapter, trainer, seed=seed, **asdict(self))


def check_dropout(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ContinualError(f"{field} must be a number in [0, 1), got {value!r}")


class AdapterPerTask:
    """Adapter + head per task; per-example routed prediction through one backbone pass."""

    schedule = Schedule.EACH_TASK
    head = Head.PER_TASK

    def __init__(
        self,
        backbone: Backbone,
        adapter: AdapterKind,
        trainer: TrainerConfig,
        head_dropout: float = 0.1,
        seed: int = 0,
        progress: bool = True,
        transfer: str = "none",
        max_resident_mb: float | None = None,
        save_dtype: str = "float32",
    ) -> None:
        self.config = AdapterPerTaskConfig(head_dropout, transfer, progress, max_resident_mb, save_dtype)
        self.save_dtype = SAVE_DTYPES[save_dtype]
        self.transfer = transfer
        self.centroids: list[np.ndarray] = []  # per task, for transfer=similar
        self.sources: dict[int, int] = {}  # task -> the earlier task its adapter was copied from
        self.backbone = backbone
        self.trainer = trainer
        self.seed = seed
        self.progress = progress
        self.device = trainer.torch_device()
        self.bank = AdapterBank(backbone, adapter)
        self.resident = ResidentSet(self.bank.adapters, max_resident_mb) if max_resident_mb is not None else None
        if self.resident is not None:  # a dropped adapter's row in a stack would keep it in memory
            self.bank.stacks = None
        self.heads = nn.ModuleList()
        self.dropout = nn.Dropout(head_dropout)
        self.tasks: list[Task] = []
        # files that already hold a task's adapter as it is: a learned adapter is frozen, so a later save
        # skips them (its files stay byte-identical, and a save costs one file, not one per task so far)
        self._on_disk: set[Path] = set()
        self._stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see _stacked_heads
        self._digests: dict[int, tuple[tuple, str]] = {}  # task -> (backbone digest + tensor versions, digest)
        self.backbone.to(self.device)
        # AdapterDrop leaves the lowest layers frozen and un-adapted: their outputs are cached for
        # evaluation and router features, and recomputed only once per epoch-independent text.
        self.first_layer = self.bank.first_layer
        self.cache = (
            PrefixCache(backbone, self.first_layer, trainer.cache_mb)
            if self.first_layer > 0 and trainer.cache_mb > 0
            else None
        )

    def _parameters(self, k: int) -> list[nn.Parameter]:
        fusion = self.bank.fusion[str(k)].parameters() if str(k) in self.bank.fusion else ()
        return [*self.bank.adapters[k].parameters(), *fusion, *self.heads[k].parameters()]

    def trainable_parameters(self, k: int) -> int:
        if self.resident is not None and not self.resident.is_resident(k):  # counted from its saved shapes
            fusion = self.bank.fusion[str(k)].parameters() if str(k) in self.bank.fusion else ()
            return self.resident.numel(k) + sum(p.numel() for p in (*fusion, *self.heads[k].parameters()))
        return sum(p.numel() for p in self._parameters(k))

    def _ensure(self, tasks: Iterable[int | None]) -> None:
        """The adapters that tasks ``tasks`` run through, in memory (with a residency budget)."""
        if self.resident is not None:
            fused = [k for k in tasks if k is not None]
            self.resident.ensure(j for k in fused for j in (range(k + 1) if str(k) in self.bank.fusion else (k,)))

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far: every task's adapter, fusion weights and head."""
        return sum(self.trainable_parameters(k) for k in range(len(self.tasks)))

    def _encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: PrefixCache | None,
        pooling: str | None = None,
        layers: tuple[int, ...] | None = (-1,),
    ) -> torch.Tensor:
        """Pooled features under the current routing, starting from ``cache``'s frozen states when given."""
        with self.trainer.autocast(self.device):
            if cache is None or min(self.backbone.layer_indices(layers)) < cache.layer:
                return self.backbone.encode(input_ids, attention_mask, pooling, layers).float()
            hidden = cache.states(input_ids, attention_mask)
            return self.backbone.encode(input_ids, attention_mask, pooling, layers, cache.layer, hidden).float()

    def _logits(
        self, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: PrefixCache | None = None
    ) -> torch.Tensor:
        """Task ``k``'s head on its adapter's features: ``[batch, labels]`` (``[batch, tokens, tags]``: token task)."""
        pooling = TOKEN_STATES if self.tasks[k].kind == TOKENS else None
        with self.bank.routed([(k, 0, input_ids.shape[0])]):
            features = self._encode(input_ids, attention_mask, cache, pooling)
        return self.heads[k](self.dropout(features))

    def _loss(self, k: int, task: Task, cache: PrefixCache | None) -> tuple[list[list[int]], Callable]:
        """The training texts' token ids, and the loss of a batch of their indices: cross-entropy over the
        labels, or over the tags at each word's first sub-token (later sub-tokens are ignored)."""
        if task.kind == TOKENS:
            tokens, starts = tokenize_words(self, task.train.texts, f"task '{task.name}' train")
            targets = [
                token_targets(len(ids), first, tags) for ids, first, tags in zip(tokens, starts, task.train.tags)
            ]

            def tag_loss(idx: np.ndarray) -> torch.Tensor:
                ids, mask = pad([tokens[i] for i in idx], self.backbone.pad_id, self.device)
                target = pad_targets([targets[i] for i in idx], self.device)
                return nn.functional.cross_entropy(self._logits(k, ids, mask, cache).flatten(0, 1), target.flatten())

            return tokens, tag_loss
        tokens = tokenize(self, task.train.texts)
        labels = torch.as_tensor(task.train.labels, device=self.device)

        def label_loss(idx: np.ndarray) -> torch.Tensor:
            ids, mask = pad([tokens[i] for i in idx], self.backbone.pad_id, self.device)
            return nn.functional.cross_entropy(self._logits(k, ids, mask, cache), labels[idx])

        return tokens, label_loss

    def _allocate(self, task: Task) -> int:
        """A fresh adapter and head for ``task``, created from a seed of (run seed, task index)."""
        k = len(self.tasks)
        self._stacked = None  # the new head is trained (or loaded) next: stack the heads again afterwards
        torch.manual_seed(task_seed(self.seed, k))
        self.bank.add(fuse=self.transfer == "fusion")
        self.heads.append(nn.Linear(self.backbone.hidden_size, task.outputs))
        self.tasks.append(task)
        for module in (*self.bank.task_modules(k), self.heads[k]):  # only the new modules: O(1) per task, not O(T)
            module.to(self.device)
        return k

    def _centroid(self, texts: Sequence[str]) -> np.ndarray:
        tokens = tokenize(self, texts)
        total = np.zeros(self.backbone.hidden_size)
        for _, ids, mask in padded_batches(self, tokens):
            total += self.features(ids, mask).sum(0).cpu().numpy()
        return total / max(1, len(tokens))

    def _start_from_similar(self, k: int, task: Task) -> None:
        """Copy the adapter of the most similar earlier task (cosine of task centroids) into adapter ``k``."""
        self.centroids.append(self._centroid(task.train.texts))
        if k == 0:
            return
        mine = self.centroids[k]
        cosine = [float(c @ mine / (np.linalg.norm(c) * np.linalg.norm(mine) + 1e-12)) for c in self.centroids[:k]]
        source = int(np.argmax(cosine))
        self._ensure([source])
        self.bank.adapters[k].load_state_dict(self.bank.adapters[source].state_dict())
        self.sources[k] = source
        log.info(
            "task %s: adapter initialised from task %s (cosine %.3f)",
            task.name,
            self.tasks[source].name,
            cosine[source],
        )

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """A new adapter and head for the step's one task, trained on it while everything else stays frozen."""
        (task,) = tasks
        k = self._allocate(task)
        self._ensure([k])  # a fused task trains through every earlier adapter: in memory for the whole step
        if self.transfer == "similar":
            self._start_from_similar(k, task)
        params = self._parameters(k)
        freeze(self.bank, self.heads)

        cfg = self.trainer
        # Over several epochs the frozen, un-adapted lower layers (AdapterDrop) are computed once per
        # text; the cache lives for this task only, since training texts are never seen again.
        cache = (
            PrefixCache(self.backbone, self.first_layer, cfg.cache_mb)
            if self.cache is not None and cfg.epochs > 1
            else None
        )
        tokens, loss_of = self._loss(k, task, cache)
        rng = np.random.default_rng([self.seed, k])
        epochs = [train_batches([len(t) for t in tokens], cfg.batch_size, rng) for _ in range(cfg.epochs)]

        # Dropout on in the adapted layers, as in standard adapter training (weights stay frozen). Layers
        # below the first adapted one stay in eval mode, so that caching them changes nothing.
        adapted = [self.backbone] if self.first_layer == 0 else self.backbone.layers[self.first_layer :]
        fitted = fit(
            params,
            epochs,
            loss_of,
            cfg,
            task.name,
            modules=(*adapted, self.dropout),
            progress=self.progress,
            on_loss=on_loss,
        )
        with torch.no_grad():  # the weights its file will hold (a no-op in float32)
            for p in params:
                p.copy_(p.to(self.save_dtype))
        val_acc = oracle_score(self, k, task, task.validation)
        return LearnReport(
            task.name,
            fitted.steps,
            len(tokens) * cfg.epochs,
            fitted.seconds,
            fitted.final_loss,
            val_acc,
            self.trainable_parameters(k),
        )

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Sort the batch by routed task, run every adapter once on its slice, unsort the outputs."""
        order, segments = segments_for(task_ids.to(self.device))
        self._ensure(k for k, _, _ in segments)
        ids, mask = input_ids[order], attention_mask[order]
        with self.bank.routed(segments):  # token states once; sequence heads read them pooled
            states = self._encode(ids, mask, self.cache, TOKEN_STATES)
        features = pool(states, mask, self.backbone.pooling)
        out = Classified.empty(ids.shape[0], self.device, ids.shape[1])
        labelled = [s for s in segments if s[0] is not None and self.tasks[s[0]].kind != TOKENS]
        if len(labelled) >= bank_module.BATCHED_FROM:  # many sequence heads: one gathered product
            self._batched_heads(labelled, features, out)
        for k, start, stop in segments:
            if k is None or (self.tasks[k].kind != TOKENS and len(labelled) >= bank_module.BATCHED_FROM):
                continue  # no task (abstained): no prediction; or already labelled by the batched heads
            rows = slice(start, stop)
            if self.tasks[k].kind == TOKENS:
                out.fill_tags(rows, self.heads[k](states[rows]), mask[rows])
            else:
                out.fill(rows, self.heads[k](features[rows]))
        if self.resident is not None:
            self.resident.release()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return Classified(*(t[inverse] for t in out))

    def _stacked_heads(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every task's head weights padded to the widest ``[tasks, labels, hidden]``, biases (``-inf`` where
        padded) and label counts; built once the heads are frozen and kept until a task is added."""
        if self._stacked is None or self._stacked[0].shape[0] != len(self.heads):
            heads = cast(list[nn.Linear], list(self.heads))
            width = max(head.out_features for head in heads)
            weight = torch.zeros(len(heads), width, self.backbone.hidden_size, device=self.device)
            bias = torch.full((len(heads), width), -torch.inf, device=self.device)
            for k, head in enumerate(heads):
                weight[k, : head.out_features], bias[k, : head.out_features] = head.weight, head.bias
            sizes = torch.tensor([head.out_features for head in heads], device=self.device)
            self._stacked = (weight, bias, sizes)
        return self._stacked

    def _batched_heads(self, segments: list, features: torch.Tensor, out: Classified) -> None:
        """Label the rows of many sequence-task segments at once: each row's head gathered, one ``einsum``."""
        weight, bias, sizes = self._stacked_heads()
        rows = torch.cat([torch.arange(start, stop, device=self.device) for _, start, stop in segments])
        tasks = torch.cat([torch.full((stop - start,), k, device=self.device) for k, start, stop in segments])
        logits = torch.einsum("bh,bch->bc", features[rows], weight[tasks]) + bias[tasks]
        out.fill(rows, logits, sizes[tasks])

    @torch.no_grad()
    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pooling: str = "mean",
        layers: tuple[int, ...] | None = (-1,),
    ) -> torch.Tensor:
        with self.bank.routed(()):  # no segments: the plain backbone
            return self._encode(input_ids, attention_mask, self.cache, pooling, layers)

    def fingerprints(self) -> Fingerprints:
        """Digests of the backbone and, per learned task, of its adapter and head (prefixed by the backbone's).

        The backbone is frozen by construction, but it is hashed anyway (about 0.2 s for MiniLM, once
        per call, shared by all tasks) so that a memoised prediction can never outlive a change to it.
        A task's digest is kept while none of its tensors was written (torch counts every in-place
        write of a tensor in its ``_version``), so a step hashes the task just trained, not every task
        so far (0.8 s at 1,000 tasks), and a change to any old tensor is still seen.
        """
        shared = digest(self.backbone)
        return Fingerprints(shared, [self._task_digest(k, shared) for k in range(len(self.tasks))])

    def _task_digest(self, k: int, shared: str) -> str:
        """Task ``k``'s digest, hashed again only when one of its tensors was written since (or first)."""
        cached = self._digests.get(k)
        if cached is not None and self.resident is not None and not self.resident.is_resident(k):
            return cached[1]  # out of memory: as it was when it was read from its file
        modules = (*self.bank.task_modules(k), self.heads[k])
        versions = (shared, *(t._version for m in modules for t in m.state_dict(keep_vars=True).values()))
        if cached is None or cached[0] != versions:
            cached = self._digests[k] = (versions, digest(*modules, prefix=shared))
        return cached[1]

    def _metadata(self, k: int, task: Task) -> dict[str, str]:
        return {
            "task": task.name,
            "index": str(k),
            "labels": json.dumps(list(task.labels)),
            "kind": task.kind,
            "backbone": self.backbone.name,
            "hidden_size": str(self.backbone.hidden_size),
            "adapter": describe(self.bank.config),
            "transfer": self.transfer,
            "initialised_from": str(self.sources.get(k, "")),
        }

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the adapters and heads of already learned ``tasks`` (in stream order) from :meth:`save`."""
        shared = ""  # the backbone's digest, taken once if a residency budget needs task digests
        for task in tasks:
            k = len(self.tasks)
            expected = self._metadata(k, task)
            checked = {key: expected[key] for key in ("backbone", "hidden_size", "adapter", "labels", "transfer")}
            if task.kind != SEQUENCE:  # files written before token tasks existed hold sequence tasks, without the key
                checked["kind"] = task.kind
            tensors = files.read_checked(
                task_file(directory, k, task.name),
                checked,
                hint="adapters only load onto the backbone, adapter config and labels they were trained with",
            )
            self._allocate(task)
            self.bank.adapters[k].load_state_dict(files.strip_prefix("adapter.", tensors))
            self.heads[k].load_state_dict(files.strip_prefix("head.", tensors))
            if str(k) in self.bank.fusion:
                self.bank.fusion[str(k)].load_state_dict(files.strip_prefix("fusion.", tensors))
            if self.transfer == "similar" and len(task.train.texts):  # resuming: later tasks compare with it
                self.centroids.append(self._centroid(task.train.texts))
            meta = files.read_metadata(task_file(directory, k, task.name))
            self._on_disk.add(task_file(directory, k, task.name).absolute())
            if meta.get("initialised_from"):
                self.sources[k] = int(meta["initialised_from"])
            for p in self._parameters(k):
                p.requires_grad_(False)
            if self.resident is not None:  # hashed while in memory; then it may leave memory
                shared = shared or digest(self.backbone)
                self._task_digest(k, shared)
                self.resident.track(k, task_file(directory, k, task.name))

    def save(self, directory: Path) -> list[Path]:
        """One safetensors file per task: its adapter (``adapter.*``) and head (``head.*``) + metadata."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, task in enumerate(self.tasks):
            path = task_file(directory, k, task.name)
            paths.append(path)
            if path.absolute() in self._on_disk and path.is_file():
                continue
            tensors = {
                **files.with_prefix("adapter.", self.bank.adapters[k].state_dict()),
                **files.with_prefix("head.", self.heads[k].state_dict()),
            }
            if str(k) in self.bank.fusion:
                tensors.update(files.with_prefix("fusion.", self.bank.fusion[str(k)].state_dict()))
            # rounded to save_dtype once trained (learn), so the cast is exact
            stored = {name: t.to(self.save_dtype) if t.is_floating_point() else t for name, t in tensors.items()}
            files.save_tensors(path, stored, self._metadata(k, task))
            self._on_disk.add(path.absolute())
        return paths


def task_file(directory: Path, k: int, name: str) -> Path:
    """Task ``k``'s file in a run's adapters folder: ``NN_<task>.safetensors``."""
    return directory / f"{k:02d}_{name}.safetensors"


def saved_tasks(directory: Path) -> list[Task]:
    """The tasks (names and labels, no data) whose files a learner's ``save`` wrote to ``directory``."""
    found = directory.glob("[0-9][0-9]*_*.safetensors") if directory.is_dir() else ()
    # NN_<task> up to 99, then 100_<task>, ...: ordered by the number, not as strings
    paths = sorted((p for p in found if p.name.split("_", 1)[0].isdigit()), key=lambda p: int(p.name.split("_", 1)[0]))
    if not paths:
        raise ContinualError(f"{directory}: no saved adapters (NN_<task>.safetensors)")
    empty = Split((), np.zeros(0, dtype=np.int64))
    tasks = []
    for k, path in enumerate(paths):
        meta = files.read_metadata(path)
        if meta.get("index") != str(k) or "labels" not in meta or "task" not in meta:
            raise ContinualError(f"{path}: not adapter {k} of a run (metadata index={meta.get('index')!r})")
        kind = meta.get("kind", SEQUENCE)
        tasks.append(Task(meta["task"], tuple(json.loads(meta["labels"])), empty, empty, empty, kind=kind))
    return tasks
