"""The product: a fresh bottleneck adapter and classification head per task on a frozen backbone.

Only the newest adapter and head receive gradients; the backbone and every earlier adapter and head
are frozen, so a task's predictions (under the oracle router) can never change after it is learned.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from continual.adapters import AdapterBank, BottleneckConfig, segments_for
from continual.backbone import Backbone
from continual.errors import ContinualError
from continual.learners.base import Classified, Fingerprints, LearnReport, LossCallback
from continual.streams import Split, Task
from continual.training import TrainerConfig, eval_batches, iter_padded, linear_schedule, train_batches


def _digest(*modules: nn.Module, prefix: str = "") -> str:
    """blake2b over the names and raw bytes of every tensor in ``modules``."""
    digest = hashlib.blake2b(prefix.encode(), digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AdapterPerTask:
    """Adapter + head per task; per-example routed prediction through one backbone pass."""

    def __init__(self, backbone: Backbone, adapter: BottleneckConfig, trainer: TrainerConfig,
                 head_dropout: float = 0.1, seed: int = 0, progress: bool = True) -> None:
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

    def _parameters(self, k: int) -> list[nn.Parameter]:
        return [*self.bank.adapters[k].parameters(), *self.heads[k].parameters()]

    def trainable_parameters(self, k: int) -> int:
        return sum(p.numel() for p in self._parameters(k))

    def _logits(self, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.bank.routed([(k, 0, input_ids.shape[0])]), self.trainer.autocast(self.device):
            features = self.backbone(input_ids, attention_mask)
        return self.heads[k](self.dropout(features.float()))

    def _allocate(self, task: Task) -> int:
        """A fresh adapter and head for ``task``, created from a seed of (run seed, task index)."""
        k = len(self.tasks)
        # Reseeding per task makes a task's initialisation, dropout masks and batches independent of
        # what ran before it, so a resumed run draws exactly what an uninterrupted one would.
        torch.manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
        self.bank.add()
        self.heads.append(nn.Linear(self.backbone.hidden_size, len(task.labels)))
        self.tasks.append(task)
        self.bank.to(self.device)
        self.heads.to(self.device)
        return k

    def learn(self, task: Task, on_loss: LossCallback | None = None) -> LearnReport:
        k = self._allocate(task)
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
        total = sum(len(e) for e in epochs)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = linear_schedule(optimizer, total, cfg.warmup_ratio)

        self.backbone.train()  # dropout on, as in standard adapter training; weights stay frozen
        self.dropout.train()
        step, loss_value, start = 0, float("nan"), time.perf_counter()
        bar = tqdm(total=total, desc=f"train {task.name}", unit="batch", disable=not self.progress, leave=False)
        try:
            for epoch, batches in enumerate(epochs):
                for idx, ids, mask in iter_padded(tokens, batches, self.pad_id, self.device):
                    loss = nn.functional.cross_entropy(self._logits(k, ids, mask), labels[idx])
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise ContinualError(
                            f"task '{task.name}': loss is {loss_value} at epoch {epoch + 1}, step {step}; "
                            "lower trainer.lr or use trainer.precision=fp32"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    bar.update()
                    if step % cfg.log_every == 0 or step == total:
                        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_value:.3f}")
                        if on_loss is not None:
                            on_loss(step, loss_value)
        finally:
            bar.close()
            self.backbone.eval()
            self.dropout.eval()
            for p in params:
                p.requires_grad_(False)
        seconds = time.perf_counter() - start
        val_acc = self.accuracy(k, task.validation.texts, task.validation.labels)
        return LearnReport(task.name, step, len(tokens) * cfg.epochs, seconds, loss_value, val_acc,
                           self.trainable_parameters(k))

    @torch.no_grad()
    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> Classified:
        """Sort the batch by routed task, run every adapter once on its slice, unsort the outputs."""
        order, segments = segments_for(task_ids.to(self.device))
        ids, mask = input_ids[order], attention_mask[order]
        with self.bank.routed(segments), self.trainer.autocast(self.device):
            features = self.backbone(ids, mask).float()
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
        with self.bank.routed(()), self.trainer.autocast(self.device):  # no segments: the plain backbone
            return self.backbone.encode(input_ids, attention_mask, pooling, layers).float()

    def accuracy(self, k: int, texts, labels: np.ndarray) -> float:
        """Accuracy of task ``k``'s own adapter and head on labelled texts (oracle routing)."""
        if len(texts) == 0:
            return float("nan")
        tokens = self.backbone.tokenize(list(texts), self.trainer.max_length)
        correct = 0
        batches = eval_batches([len(t) for t in tokens], self.trainer.eval_batch_size)
        for idx, ids, mask in iter_padded(tokens, batches, self.pad_id, self.device):
            task_ids = torch.full((len(idx),), k, dtype=torch.long, device=self.device)
            correct += int((self.predict(ids, mask, task_ids).cpu().numpy() == labels[idx]).sum())
        return correct / len(texts)

    def fingerprints(self) -> Fingerprints:
        """Digests of the backbone and, per learned task, of its adapter and head (prefixed by the backbone's).

        The backbone is frozen by construction, but it is hashed anyway (about 0.2 s for MiniLM, once
        per call, shared by all tasks) so that a memoised prediction can never outlive a change to it.
        """
        shared = _digest(self.backbone)
        return Fingerprints(shared, [_digest(self.bank.adapters[k], self.heads[k], prefix=shared)
                                     for k in range(len(self.tasks))])

    def _metadata(self, k: int, task: Task) -> dict[str, str]:
        return {"task": task.name, "index": str(k), "labels": json.dumps(list(task.labels)),
                "backbone": self.backbone.name, "hidden_size": str(self.backbone.hidden_size),
                "adapter": json.dumps(self.bank.config.__dict__)}

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
            for key in ("backbone", "hidden_size", "adapter", "labels"):
                if meta.get(key) != expected[key]:
                    raise ContinualError(
                        f"{path}: saved for {key}={meta.get(key)}, but this run has {key}={expected[key]}; "
                        "adapters only load onto the backbone, adapter config and labels they were trained with"
                    )
            self._allocate(task)
            self.bank.adapters[k].load_state_dict({n[len("adapter."):]: t for n, t in tensors.items()
                                                   if n.startswith("adapter.")})
            self.heads[k].load_state_dict({n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")})
            for p in self._parameters(k):
                p.requires_grad_(False)

    def save(self, directory: Path) -> list[Path]:
        """One safetensors file per task: its adapter (``adapter.*``) and head (``head.*``) + metadata."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, task in enumerate(self.tasks):
            tensors = {f"adapter.{n}": t.detach().cpu().contiguous() for n, t in self.bank.adapters[k].state_dict().items()}
            tensors.update({f"head.{n}": t.detach().cpu().contiguous() for n, t in self.heads[k].state_dict().items()})
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
