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
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from continual.adapters import AdapterBank, AdapterConfig, segments_for
from continual.backbone import Backbone
from continual.cache import PrefixCache
from continual.errors import ContinualError
from continual.learners.base import Classified, Fingerprints, LearnReport, LossCallback, digest, oracle_accuracy
from continual.streams import Split, Task
from continual.training import TrainerConfig, eval_batches, fit, iter_padded, pad, train_batches


log = logging.getLogger(__name__)
TRANSFERS = ("none", "similar", "fusion")


class AdapterPerTask:
    """Adapter + head per task; per-example routed prediction through one backbone pass."""

    def __init__(self, backbone: Backbone, adapter: AdapterConfig, trainer: TrainerConfig,
                 head_dropout: float = 0.1, seed: int = 0, progress: bool = True, transfer: str = "none") -> None:
        if transfer not in TRANSFERS:
            raise ContinualError(f"learner.transfer must be one of {list(TRANSFERS)}, got {transfer!r}")
        self.transfer = transfer
        self.centroids: list[np.ndarray] = []  # per task, for transfer=similar
        self.sources: dict[int, int] = {}  # task -> the earlier task its adapter was copied from
        self.backbone = backbone
        self.trainer = trainer
        self.seed = seed
        self.progress = progress
        self.device = trainer.torch_device()
        self.bank = AdapterBank(backbone, adapter)
        self.heads = nn.ModuleList()
        self.dropout = nn.Dropout(head_dropout)
        self.tasks: list[Task] = []
        self.backbone.to(self.device)
        self.pad_id: int = backbone.tokenizer.pad_token_id or 0
        # AdapterDrop leaves the lowest layers frozen and un-adapted: their outputs are cached for
        # evaluation and router features, and recomputed only once per epoch-independent text.
        self.first_layer = self.bank.first_layer
        self.cache = PrefixCache(backbone, self.first_layer, trainer.cache_mb) \
            if self.first_layer > 0 and trainer.cache_mb > 0 else None

    def _parameters(self, k: int) -> list[nn.Parameter]:
        fusion = self.bank.fusion[str(k)].parameters() if str(k) in self.bank.fusion else ()
        return [*self.bank.adapters[k].parameters(), *fusion, *self.heads[k].parameters()]

    def trainable_parameters(self, k: int) -> int:
        return sum(p.numel() for p in self._parameters(k))

    def trained_parameters(self) -> int:
        """Distinct parameters trained so far: every task's adapter, fusion weights and head."""
        return sum(self.trainable_parameters(k) for k in range(len(self.tasks)))

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: PrefixCache | None,
                pooling: str | None = None, layers: tuple[int, ...] = (-1,)) -> torch.Tensor:
        """Pooled features under the current routing, starting from ``cache``'s frozen states when given."""
        with self.trainer.autocast(self.device):
            if cache is None or min(k % (len(self.backbone.layers) + 1) for k in layers) < cache.layer:
                return self.backbone.encode(input_ids, attention_mask, pooling, layers).float()
            hidden = cache.states(input_ids, attention_mask)
            return self.backbone.encode(input_ids, attention_mask, pooling, layers, cache.layer, hidden).float()

    def _logits(self, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                cache: PrefixCache | None = None) -> torch.Tensor:
        with self.bank.routed([(k, 0, input_ids.shape[0])]):
            features = self._encode(input_ids, attention_mask, cache)
        return self.heads[k](self.dropout(features))

    def _allocate(self, task: Task) -> int:
        """A fresh adapter and head for ``task``, created from a seed of (run seed, task index)."""
        k = len(self.tasks)
        # Reseeding per task makes a task's initialisation, dropout masks and batches independent of
        # what ran before it, so a resumed run draws exactly what an uninterrupted one would.
        torch.manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
        self.bank.add(fuse=self.transfer == "fusion")
        self.heads.append(nn.Linear(self.backbone.hidden_size, len(task.labels)))
        self.tasks.append(task)
        self.bank.to(self.device)
        self.heads.to(self.device)
        return k

    def _centroid(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.backbone.tokenize(list(texts), self.trainer.max_length)
        total = np.zeros(self.backbone.hidden_size)
        for _, ids, mask in iter_padded(tokens, eval_batches([len(t) for t in tokens], self.trainer.eval_batch_size),
                                        self.pad_id, self.device):
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
        self.bank.adapters[k].load_state_dict(self.bank.adapters[source].state_dict())
        self.sources[k] = source
        log.info("task %s: adapter initialised from task %s (cosine %.3f)", task.name, self.tasks[source].name,
                 cosine[source])

    def learn(self, task: Task, on_loss: LossCallback | None = None) -> LearnReport:
        k = self._allocate(task)
        if self.transfer == "similar":
            self._start_from_similar(k, task)
        params = self._parameters(k)
        for p in self.bank.parameters():
            p.requires_grad_(False)
        for p in self.heads.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)

        cfg = self.trainer
        tokens = self.backbone.tokenize(list(task.train.texts), cfg.max_length)
        labels = torch.as_tensor(task.train.labels, device=self.device)
        rng = np.random.default_rng([self.seed, k])
        epochs = [train_batches([len(t) for t in tokens], cfg.batch_size, rng) for _ in range(cfg.epochs)]

        # Over several epochs the frozen, un-adapted lower layers (AdapterDrop) are computed once per
        # text; the cache lives for this task only, since training texts are never seen again.
        cache = PrefixCache(self.backbone, self.first_layer, cfg.cache_mb) \
            if self.cache is not None and cfg.epochs > 1 else None

        def loss_of(idx: np.ndarray) -> torch.Tensor:
            ids, mask = pad([tokens[i] for i in idx], self.pad_id, self.device)
            return nn.functional.cross_entropy(self._logits(k, ids, mask, cache), labels[idx])

        # Dropout on in the adapted layers, as in standard adapter training (weights stay frozen). Layers
        # below the first adapted one stay in eval mode, so that caching them changes nothing.
        adapted = [self.backbone] if self.first_layer == 0 else self.backbone.layers[self.first_layer:]
        fitted = fit(params, epochs, loss_of, cfg, task.name, modules=(*adapted, self.dropout),
                     progress=self.progress, on_loss=on_loss)
        val_acc = self.accuracy(k, task.validation.texts, task.validation.labels)
        return LearnReport(task.name, fitted.steps, len(tokens) * cfg.epochs, fitted.seconds, fitted.final_loss,
                           val_acc, self.trainable_parameters(k))

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Sort the batch by routed task, run every adapter once on its slice, unsort the outputs."""
        order, segments = segments_for(task_ids.to(self.device))
        ids, mask = input_ids[order], attention_mask[order]
        with self.bank.routed(segments):
            features = self._encode(ids, mask, self.cache)
        n = ids.shape[0]
        labels = torch.full((n,), -1, dtype=torch.long, device=self.device)
        confidence = torch.zeros(n, device=self.device)
        certainty = torch.zeros(n, device=self.device)
        for k, start, stop in segments:
            if k is None:  # a negative task id means "no task" (abstained): no prediction
                continue
            probs = self.heads[k](features[start:stop]).softmax(-1)
            confidence[start:stop], labels[start:stop] = probs.max(-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
            certainty[start:stop] = 1.0 - entropy / math.log(probs.shape[-1])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(n, device=order.device)
        return Classified(labels[inverse], confidence[inverse], certainty[inverse])

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        return self.classify(input_ids, attention_mask, task_ids).labels

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean",
                 layers: tuple[int, ...] = (-1,)) -> torch.Tensor:
        with self.bank.routed(()):  # no segments: the plain backbone
            return self._encode(input_ids, attention_mask, self.cache, pooling, layers)

    def accuracy(self, k: int, texts, labels: np.ndarray) -> float:
        """Accuracy of task ``k``'s own adapter and head on labelled texts (oracle routing)."""
        return oracle_accuracy(self, k, texts, labels)

    def fingerprints(self) -> Fingerprints:
        """Digests of the backbone and, per learned task, of its adapter and head (prefixed by the backbone's).

        The backbone is frozen by construction, but it is hashed anyway (about 0.2 s for MiniLM, once
        per call, shared by all tasks) so that a memoised prediction can never outlive a change to it.
        """
        shared = digest(self.backbone)
        return Fingerprints(shared, [digest(*self.bank.task_modules(k), self.heads[k], prefix=shared)
                                     for k in range(len(self.tasks))])

    def _metadata(self, k: int, task: Task) -> dict[str, str]:
        return {"task": task.name, "index": str(k), "labels": json.dumps(list(task.labels)),
                "backbone": self.backbone.name, "hidden_size": str(self.backbone.hidden_size),
                "adapter": json.dumps({"kind": type(self.bank.config).__name__, **self.bank.config.__dict__}),
                "transfer": self.transfer, "initialised_from": str(self.sources.get(k, ""))}

    @staticmethod
    def _file(directory: Path, k: int, task: Task) -> Path:
        return directory / f"{k:02d}_{task.name}.safetensors"

    def load(self, directory: Path, tasks: Sequence[Task]) -> None:
        """Restore the adapters and heads of already learned ``tasks`` (in stream order) from :meth:`save`."""
        for task in tasks:
            k = len(self.tasks)
            path = self._file(directory, k, task)
            if not path.is_file():
                raise ContinualError(f"{path}: missing, so task '{task.name}' cannot be restored")
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            expected = self._metadata(k, task)
            for key in ("backbone", "hidden_size", "adapter", "labels", "transfer"):
                if meta.get(key) != expected[key]:
                    raise ContinualError(
                        f"{path}: saved for {key}={meta.get(key)}, but this run has {key}={expected[key]}; "
                        "adapters only load onto the backbone, adapter config and labels they were trained with"
                    )
            self._allocate(task)
            self.bank.adapters[k].load_state_dict({n[len("adapter."):]: t for n, t in tensors.items()
                                                   if n.startswith("adapter.")})
            self.heads[k].load_state_dict({n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")})
            if str(k) in self.bank.fusion:
                self.bank.fusion[str(k)].load_state_dict({n[len("fusion."):]: t for n, t in tensors.items()
                                                         if n.startswith("fusion.")})
            if self.transfer == "similar" and len(task.train.texts):  # resuming: later tasks compare with it
                self.centroids.append(self._centroid(task.train.texts))
            if meta.get("initialised_from"):
                self.sources[k] = int(meta["initialised_from"])
            for p in self._parameters(k):
                p.requires_grad_(False)

    def save(self, directory: Path) -> list[Path]:
        """One safetensors file per task: its adapter (``adapter.*``) and head (``head.*``) + metadata."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, task in enumerate(self.tasks):
            tensors = {f"adapter.{n}": t.detach().cpu().contiguous() for n, t in self.bank.adapters[k].state_dict().items()}
            tensors.update({f"head.{n}": t.detach().cpu().contiguous() for n, t in self.heads[k].state_dict().items()})
            if str(k) in self.bank.fusion:
                tensors.update({f"fusion.{n}": t.detach().cpu().contiguous()
                                for n, t in self.bank.fusion[str(k)].state_dict().items()})
            path = self._file(directory, k, task)
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata=self._metadata(k, task))
            tmp.replace(path)  # atomic: a crash mid-write never leaves a truncated adapter
            paths.append(path)
        return paths


def saved_tasks(directory: Path) -> list[Task]:
    """The tasks (names and labels, no data) whose adapters :meth:`AdapterPerTask.save` wrote to ``directory``."""
    paths = sorted(directory.glob("[0-9][0-9]_*.safetensors")) if directory.is_dir() else []
    if not paths:
        raise ContinualError(f"{directory}: no saved adapters (NN_<task>.safetensors)")
    empty = Split((), np.zeros(0, dtype=np.int64))
    tasks = []
    for k, path in enumerate(paths):
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("index") != str(k) or "labels" not in meta or "task" not in meta:
            raise ContinualError(f"{path}: not adapter {k} of a run (metadata index={meta.get('index')!r})")
        tasks.append(Task(meta["task"], tuple(json.loads(meta["labels"])), empty, empty, empty))
    return tasks
