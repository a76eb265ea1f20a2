"""The product: a fresh adapter and classification head per task on a frozen backbone.

Only the newest adapter and head receive gradients; the backbone and every earlier adapter and head
are frozen, so a task's predictions (under the oracle router) can never change after it is learned.

Knowledge transfer without giving up that isolation (``transfer``: ``none``, ``similar``, ``fusion``) is
:mod:`continual.learners.transfer`; forward transfer is measured against ``transfer=none`` with the same
seed (see :func:`continual.metrics.forward_transfer`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from continual import files, migrations
from continual.adapters import AdapterBank, AdapterKind, describe, segments_for
from continual.adapters import bank as bank_module
from continual.adapters.fusion import Fusion, FusionConfig
from continual.adapters.resident import ResidentSet
from continual.checks import check_number
from continual.errors import ContinualError
from continual.learners.adapter_files import AdapterFiles, task_file
from continual.learners.base import (
    Classified,
    Fingerprints,
    Head,
    LearnReport,
    LossCallback,
    Schedule,
    digest,
    encode,
    freeze,
    oracle_score,
    padded_batches,
    task_seed,
    tokenize,
)
from continual.learners.head_init import HEAD_INITS, start_head
from continual.learners.heads import TaskHeads
from continual.learners.transfer import TRANSFERS, FuseEarlier, transfer_named
from continual.model.backbone import TOKEN_STATES, Backbone, pool
from continual.model.cache import PrefixCache
from continual.model.training import IGNORED, KeepBest, TrainerConfig, fit, pad, train_batches
from continual.streams import Task

log = logging.getLogger(__name__)
ATTENTION_TEXTS = 200  # validation texts a fused task's mean attention per source is measured on
KEEPS = ("last", "best")  # learner.keep: the last weights, or the best on validation
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class AdapterPerTaskConfig:
    """Options of :class:`AdapterPerTask` (``learner=adapter_per_task``).

    ``head_dropout``: dropout on the pooled features before each task's linear head, in [0, 1).
    ``transfer``: ``none`` | ``similar`` | ``fusion`` (see the module docstring).
    ``fusion``: with ``transfer=fusion``, how and what a new task fuses (:class:`FusionConfig`).
    ``max_resident_mb``: adapters loaded from a run's files (predict, serving, resume) stay in memory up
    to this many megabytes; the others are read back from their files when routed to (LRU, see
    :mod:`continual.adapters.resident`). None: all resident.
    ``head_init``: where each new head starts: fitted on the task's features before its adapter trains,
    ``probe`` (logistic regression, the default: measured best) or ``lda`` (closed form), or ``random`` (the
    plain recipe); see :mod:`continual.learners.head_init`.
    ``save_dtype``: what adapter files hold: ``float32``, or ``float16`` / ``bfloat16`` (half the bytes, for
    long streams of small tasks). Below float32 each task's weights are rounded to it once trained, so the
    model that is evaluated is the one its file holds and a resumed run continues from the same weights.
    ``keep``: which weights a task ends with: ``last``, the end of training (the default: measured), or
    ``best``, the best on its validation split of its start (head fitted, adapter untouched) and each epoch's
    end (early stopping's rule). A task without validation texts keeps its last.
    """

    head_dropout: float = 0.1
    transfer: str = "none"
    fusion: FusionConfig = FusionConfig()
    progress: bool = True
    max_resident_mb: float | None = None
    save_dtype: str = "float32"
    head_init: str = "probe"
    keep: str = "last"

    head = Head.PER_TASK  # per-task modules on a frozen backbone: a router chooses among them

    def __post_init__(self) -> None:
        check_number(self.head_dropout, "learner.head_dropout", low=0, high=1, below=True)
        check_number(self.max_resident_mb, "learner.max_resident_mb", low=0, optional=True, unit="megabytes")
        if isinstance(self.fusion, Mapping):  # plain values (e.g. from YAML without a _target_)
            object.__setattr__(self, "fusion", FusionConfig(**self.fusion))
        if self.transfer not in TRANSFERS:
            raise ContinualError(f"learner.transfer must be one of {list(TRANSFERS)}, got {self.transfer!r}")
        if self.head_init not in HEAD_INITS:
            raise ContinualError(f"learner.head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")
        if self.keep not in KEEPS:
            raise ContinualError(f"learner.keep must be one of {list(KEEPS)}, got {self.keep!r}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ContinualError(f"learner.save_dtype must be one of {list(SAVE_DTYPES)}, got {self.save_dtype!r}")

    def build(self, backbone: Backbone, adapter: AdapterKind, trainer: TrainerConfig, seed: int) -> AdapterPerTask:
        return AdapterPerTask(backbone, adapter, trainer, self, seed)


class AdapterPerTask:
    """Adapter + head per task; per-example routed prediction through one backbone pass.

    Its parts: the adapters (:class:`AdapterBank`, with a :class:`ResidentSet` under a memory budget), the
    heads (:class:`TaskHeads`), how a new adapter draws on earlier ones (:mod:`continual.learners.transfer`)
    and the task files (:class:`AdapterFiles`).
    """

    schedule = Schedule.EACH_TASK
    head = Head.PER_TASK

    def __init__(
        self,
        backbone: Backbone,
        adapter: AdapterKind,
        trainer: TrainerConfig,
        config: AdapterPerTaskConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config = config or AdapterPerTaskConfig()
        self.backbone, self.trainer, self.seed = backbone, trainer, seed
        self.device = trainer.torch_device()
        self.tasks: list[Task] = []
        self.bank = AdapterBank(backbone, adapter)
        self.resident = (
            None if config.max_resident_mb is None else ResidentSet(self.bank.adapters, config.max_resident_mb)
        )
        if self.resident is not None:  # a dropped adapter's row in a stack would keep it in memory
            self.bank.stacks = None
        self.heads = TaskHeads(backbone.hidden_size, config.head_dropout)
        self.transfer = transfer_named(config.transfer, config.fusion, self._centroid, self._ensure)
        self.files = AdapterFiles(SAVE_DTYPES[config.save_dtype])
        self._digests: dict[int, tuple[tuple, str]] = {}  # task -> (backbone digest + tensor versions, digest)
        self.backbone.place(self.device, trainer.frozen_dtype(self.device))
        # AdapterDrop leaves the lowest layers frozen and un-adapted: their outputs are cached for
        # evaluation and router features, and recomputed only once per epoch-independent text.
        self.first_layer = self.bank.first_layer
        self.cache = (
            PrefixCache(backbone, self.first_layer, trainer.cache_mb)
            if self.first_layer > 0 and trainer.cache_mb > 0
            else None
        )

    # --- the parts of task k ----------------------------------------------------------------------------------
    def _parameters(self, k: int) -> list[nn.Parameter]:
        """What task ``k`` trains: its adapter, its fusion weights if fused, its head."""
        return [p for module in (*self.bank.own_modules(k), self.heads[k]) for p in module.parameters()]

    def _param_groups(self, k: int) -> list[dict]:
        """Task ``k``'s parameters for the optimiser: its fusion weights (if fused) at ``learner.fusion.lr``, the
        rest at the trainer's."""
        fusion = [p for m in self.bank.own_modules(k)[1:] for p in m.parameters()]
        rest = [p for p in self._parameters(k) if all(p is not q for q in fusion)]
        return [
            {"params": rest},
            *([{"params": fusion, "lr": self.config.fusion.learning_rate(self.trainer.lr)}] if fusion else []),
        ]

    def trainable_parameters(self, k: int) -> int:
        """Task ``k``'s own parameters (an adapter out of memory is counted from its saved shapes)."""
        if self.resident is not None and not self.resident.is_resident(k):
            rest = (*self.bank.own_modules(k)[1:], self.heads[k])  # fusion weights and head stay resident
            return self.resident.numel(k) + sum(p.numel() for m in rest for p in m.parameters())
        return sum(p.numel() for p in self._parameters(k))

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far: every task's adapter, fusion weights and head."""
        return sum(self.trainable_parameters(k) for k in range(len(self.tasks)))

    def _ensure(self, tasks: Iterable[int | None]) -> None:
        """The adapters that tasks ``tasks`` run through, in memory (with a residency budget)."""
        if self.resident is not None:
            self.resident.ensure(j for k in tasks if k is not None for j in self.bank.runs_through(k))

    def _allocate(self, task: Task) -> int:
        """A fresh adapter and head for ``task``, created from a seed of (run seed, task index)."""
        k = len(self.tasks)
        torch.manual_seed(task_seed(self.seed, k))
        self.bank.add()
        self.heads.add(task.outputs, self.device)
        self.tasks.append(task)
        for module in self.bank.own_modules(k):  # only the new modules: O(1) per task, not O(T)
            module.to(self.device)
        return k

    # --- forward passes ---------------------------------------------------------------------------------------
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
        """Task ``k``'s head on its adapter's features, as its kind reads them (``[batch, labels]``, or
        ``[batch, tokens, tags]`` for a tagger)."""
        with self.bank.routed([(k, 0, input_ids.shape[0])]):
            features = self._encode(input_ids, attention_mask, cache, self.tasks[k].kind.pooling)
        return self.heads.logits(k, features)

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Sort the batch by routed task, run every adapter once on its slice, unsort the outputs."""
        if self.resident is None:
            return self._classify(input_ids, attention_mask, task_ids)
        with self.resident.in_use:  # from reading its adapters back to dropping them again: one batch at a time
            return self._classify(input_ids, attention_mask, task_ids)

    def _classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        order, segments = segments_for(task_ids.to(self.device))
        self._ensure(k for k, _, _ in segments)
        ids, mask = input_ids[order], attention_mask[order]
        with self.bank.routed(segments):  # token states once; sequence heads read them pooled
            states = self._encode(ids, mask, self.cache, TOKEN_STATES)
        features = pool(states, mask, self.backbone.pooling)
        per_text = [s for s in segments if s[0] is not None and self.tasks[s[0]].kind.per_text]
        taggers = [self.tasks[k].outputs for k, _, _ in segments if k is not None and not self.tasks[k].kind.per_text]
        out = Classified.empty(ids.shape[0], self.device, ids.shape[1], max(taggers, default=0))
        batched = len(per_text) >= bank_module.BATCHED_FROM
        if batched:  # many heads that each read one vector per text: one gathered product
            self.heads.label_many(per_text, features, out)
        for k, start, stop in segments:
            if k is None or (batched and self.tasks[k].kind.per_text):
                continue  # no task (abstained): no prediction; or already labelled by the batched heads
            rows, kind = slice(start, stop), self.tasks[k].kind
            read = features if kind.pooling is None else pool(states, mask, kind.pooling)  # what its head reads
            kind.fill(out, rows, self.heads[k](read[rows]), mask[rows])
        if self.resident is not None:
            self.resident.release()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return Classified(*(t[inverse] for t in out))

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

    def _centroid(self, texts: Sequence[str]) -> np.ndarray:
        """The mean frozen feature of ``texts`` (what ``transfer=similar`` compares)."""
        tokens = tokenize(self, texts)
        total = np.zeros(self.backbone.hidden_size)
        for _, ids, mask in padded_batches(self, tokens):
            total += self.features(ids, mask).sum(0).cpu().numpy()
        return total / max(1, len(tokens))

    # --- learning ---------------------------------------------------------------------------------------------
    def _loss(self, k: int, task: Task, cache: PrefixCache | None) -> tuple[list[list[int]], Callable, float | None]:
        """The training texts' token ids, the loss of a batch of their indices (the task kind's loss) and the
        probe's penalty: the head started as ``learner.head_init`` says."""
        encoded = encode(self, task.kind, task.train.texts, f"task '{task.name}' train")
        targets = task.kind.targets(task.train, encoded)
        tokens = encoded.tokens
        l2 = self._start_head(k, task, tokens, targets) if self.config.head_init != "random" else None

        def loss(idx: np.ndarray) -> torch.Tensor:
            ids, mask = pad([tokens[i] for i in idx], self.backbone.pad_id, self.device)
            return task.kind.loss(self._logits(k, ids, mask, cache), [targets[i] for i in idx])

        return tokens, loss, l2

    def _start_head(self, k: int, task: Task, tokens: list[list[int]], targets: list) -> float | None:
        """Fit task ``k``'s head on what it reads before training (its fresh adapter's features: the frozen
        backbone's), one example per target the loss counts; a probe's penalty chosen on validation."""
        held_out = None
        if self.config.head_init == "probe" and len(task.validation) > 0:
            encoded = encode(self, task.kind, task.validation.texts, f"task '{task.name}' validation")
            held_out = self._head_examples(k, task, encoded.tokens, task.kind.targets(task.validation, encoded))
        l2 = start_head(self.heads[k], self.config.head_init, self._head_examples(k, task, tokens, targets), held_out)
        if l2 is not None:
            chosen = "" if held_out is None else " (chosen on validation)"
            log.info("task %s: head started from a probe with L2 %g%s", task.name, l2, chosen)
        return l2

    @torch.no_grad()
    def _head_examples(
        self, k: int, task: Task, tokens: list[list[int]], targets: list
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The features task ``k``'s head reads of ``tokens`` now, and their labels: one row per counted target."""
        features, labels = [], []
        for idx, ids, mask in padded_batches(self, tokens):
            with self.bank.routed([(k, 0, ids.shape[0])]):
                read = self._encode(ids, mask, None, task.kind.pooling)  # [n, hidden] or [n, tokens, hidden]
            target = task.kind.target_tensor([targets[i] for i in idx], self.device)
            counted = target != IGNORED
            features.append(read[counted])
            labels.append(target[counted])
        return torch.cat(features), torch.cat(labels)

    def learn(self, tasks: Sequence[Task], on_loss: LossCallback | None = None) -> LearnReport:
        """A new adapter and head for the step's one task, trained on it while everything else stays frozen."""
        (task,) = tasks
        k = self._allocate(task)
        self._ensure([k])  # a fused task trains through every earlier adapter: in memory for the whole step
        self.transfer.start(self.bank, k, task, self.tasks)
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
        tokens, loss_of, probe_l2 = self._loss(k, task, cache)
        keep = self._keeper(k, task, params)
        rng = np.random.default_rng([self.seed, k])
        epochs = [train_batches([len(t) for t in tokens], cfg.batch_size, rng) for _ in range(cfg.epochs)]

        # Dropout on in the adapted layers, as in standard adapter training (weights stay frozen). Layers
        # below the first adapted one stay in eval mode, so that caching them changes nothing.
        adapted = [self.backbone] if self.first_layer == 0 else self.backbone.layers[self.first_layer :]
        fitted = fit(
            self._param_groups(k),
            epochs,
            self._annealed(k, loss_of, sum(len(e) for e in epochs)),
            cfg,
            task.name,
            modules=(*adapted, self.heads.dropout),
            progress=self.config.progress,
            on_loss=on_loss,
            after_epoch=None if keep is None else keep.check,
        )
        if keep is not None:
            keep.restore()
        with torch.no_grad():  # the weights its file will hold (a no-op in float32)
            for p in params:
                p.copy_(p.to(self.files.dtype))
        if isinstance(self.transfer, FuseEarlier) and self.bank.fused(k):  # while its sources are in memory
            self.transfer.attention[k] = self._mean_attention(k, task.validation.texts or task.train.texts)
        rounded = self.files.dtype != torch.float32  # then scored again: the file's weights are what answers
        val_acc = keep.best if keep is not None and not rounded else oracle_score(self, k, task, task.validation)
        examples, trainable = len(tokens) * cfg.epochs, self.trainable_parameters(k)
        if self.resident is not None:
            self.resident.release()  # the step is over: back under the budget
        kept = None if keep is None else keep.kept
        return LearnReport(
            task.name, fitted.steps, examples, fitted.seconds, fitted.final_loss, val_acc, trainable, kept, probe_l2
        )

    def _keeper(self, k: int, task: Task, params: list[nn.Parameter]) -> KeepBest | None:
        """With ``learner.keep=best`` and validation texts, task ``k``'s weights scored now (its start) and kept
        at their best; a fused task is scored at temperature 1, as it answers."""
        if self.config.keep != "best" or len(task.validation) == 0:
            return None

        fusion = cast(Fusion, self.bank.fusion[str(k)]) if self.bank.fused(k) else None

        def score() -> float:
            hot = 1.0 if fusion is None else fusion.temperature
            self._set_temperature(fusion, 1.0)
            try:
                return oracle_score(self, k, task, task.validation)
            finally:
                self._set_temperature(fusion, hot)
                self._ensure([k])  # scoring may drop what training runs through (a residency budget): back

        keep = KeepBest(params, score)
        keep.check()
        return keep

    @staticmethod
    def _set_temperature(fusion: Fusion | None, value: float) -> None:
        if fusion is not None:
            fusion.temperature = value

    def _annealed(self, k: int, loss_of: Callable, steps: int) -> Callable:
        """``loss_of``, lowering fused task ``k``'s attention temperature from ``learner.fusion.temperature`` at
        the first of ``steps`` to 1 at the last (``loss_of`` itself without fusion or annealing)."""
        start = self.config.fusion.temperature
        if start == 1 or not self.bank.fused(k):
            return loss_of
        fusion = cast(Fusion, self.bank.fusion[str(k)])
        done = iter(range(steps))

        def loss(idx: np.ndarray) -> torch.Tensor:
            left = (steps - 1 - next(done, steps - 1)) / (steps - 1) if steps > 1 else 0.0  # 1 -> 0: first -> last
            fusion.temperature = 1 + (start - 1) * left
            return loss_of(idx)

        return loss

    @torch.no_grad()
    def _mean_attention(self, k: int, texts: Sequence[str]) -> dict[int, float]:
        """Fused task ``k``'s mean weight on each of its sources over the tokens of ``texts`` (at most
        :data:`ATTENTION_TEXTS`) and every site: what it reuses."""
        fusion = cast(Fusion, self.bank.fusion[str(k)])
        fusion.recorded, total, tokens = [], torch.zeros(len(fusion.sources)), 0.0
        try:
            for _, ids, mask in padded_batches(self, tokenize(self, texts[:ATTENTION_TEXTS])):
                with self.bank.routed([(k, 0, ids.shape[0])]):
                    self._encode(ids, mask, None, TOKEN_STATES)
                for weights in fusion.recorded:  # one per site: [batch, tokens, sources]
                    total += (weights * mask.unsqueeze(-1)).sum((0, 1)).cpu()
                tokens += float(mask.sum()) * len(fusion.recorded)
                fusion.recorded.clear()
        finally:
            fusion.recorded = None
        return {j: float(w) / max(tokens, 1.0) for j, w in zip(fusion.source_list, total)}

    def fusion_attention(self) -> dict[str, dict[str, float]]:
        """Per fused task (by name), its mean attention on each source task (by name); empty without fusion."""
        if not isinstance(self.transfer, FuseEarlier):
            return {}
        names = [t.name for t in self.tasks]
        return {names[k]: {names[j]: w for j, w in row.items()} for k, row in sorted(self.transfer.attention.items())}

    # --- digests and files ------------------------------------------------------------------------------------
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
            "kind": task.kind.name,
            "backbone": self.backbone.name,
            "hidden_size": str(self.backbone.hidden_size),
            "adapter": describe(self.bank.config),
            "transfer": self.transfer.name,
            **self.transfer.metadata(k),
        }

    def _tensors(self, k: int) -> dict[str, torch.Tensor]:
        """Task ``k``'s file: its adapter (``adapter.*``), head (``head.*``) and fusion weights (``fusion.*``)."""
        tensors = {
            **files.with_prefix("adapter.", self.bank.adapters[k].state_dict()),
            **files.with_prefix("head.", self.heads[k].state_dict()),
        }
        if self.bank.fused(k):
            tensors.update(files.with_prefix("fusion.", self.bank.fusion[str(k)].state_dict()))
        return tensors

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the adapters and heads of already learned ``tasks`` (in stream order) from :meth:`save`."""
        shared = ""  # the backbone's digest, taken once if a residency budget needs task digests
        for task in tasks:
            k, path = len(self.tasks), task_file(directory, len(self.tasks), task.name)
            tensors, meta = self.files.read(path, self._metadata(k, task))
            self._allocate(task)
            self.bank.adapters[k].load_state_dict(files.strip_prefix("adapter.", tensors))
            self.heads[k].load_state_dict(files.strip_prefix("head.", tensors))
            self._restore_fusion(k, path, tensors, meta)
            self.transfer.restored(k, task, meta)
            freeze(*self.bank.own_modules(k), self.heads[k])
            if self.resident is not None:  # hashed while in memory; then it may leave memory
                shared = shared or digest(self.backbone)
                self._task_digest(k, shared)
                self.resident.track(k, path)

    def _restore_fusion(self, k: int, path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """Task ``k``'s fusion weights (if its file holds any), fused from the sources it was trained with."""
        fusion = files.strip_prefix("fusion.", migrations.fusion_tensors(tensors, k))
        if not fusion:
            return
        if meta.get("fusion") != self.config.fusion.kind:
            raise ContinualError(
                f"{path}: fused with learner.fusion.kind={meta.get('fusion')}; this run has {self.config.fusion.kind}"
            )
        sources = [int(j) for j in fusion["sources"].tolist()[:-1]]
        self._ensure(sources)
        self.bank.fuse(k, self.config.fusion.kind, sources).load_state_dict(fusion)

    def save(self, directory: Path) -> list[Path]:
        """One safetensors file per task (see :meth:`_tensors`) with its metadata; files that hold a task as it
        is are kept as they are."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [task_file(directory, k, task.name) for k, task in enumerate(self.tasks)]
        for k, (task, path) in enumerate(zip(self.tasks, paths)):
            if path.absolute() not in self.files.on_disk or not path.is_file():
                self.files.write(path, self._tensors(k), self._metadata(k, task))
        return paths
