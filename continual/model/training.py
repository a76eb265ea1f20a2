"""Trainer settings and the batching every learner and evaluator shares.

Batches are padded to their own longest member (dynamic padding) and, for training, drawn from
length-sorted pools so that a batch holds texts of similar length: on short intents this removes
most padding work. Evaluation sorts the whole split by length; results do not depend on batching.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from continual.checks import check_int, check_number
from continual.errors import ContinualError

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "auto")

POOL_BATCHES = 50  # training batches per length-sorted pool: long enough to group lengths, short enough to stay random


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation and batching settings shared by all learners.

    ``precision``: ``fp32``, ``bf16`` (a frozen backbone held in bf16, autocast for the rest: trained weights
    keep fp32 master copies) or ``auto`` (bf16 only where the device has native bf16, see :func:`native_bf16`).
    The command's default (``conf/trainer/default.yaml``) is ``auto``; built in code the default is ``fp32``,
    the same numbers on every machine.
    """

    epochs: int = 5
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    max_length: int = 128
    precision: str = "fp32"
    device: str = "auto"
    log_every: int = 10
    cache_mb: float = 1024

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "log_every"):
            check_int(getattr(self, name), f"trainer.{name}", low=1)
        for name in ("weight_decay", "grad_clip"):
            check_number(getattr(self, name), f"trainer.{name}", low=0)
        check_number(self.lr, "trainer.lr", low=0, above=True)
        check_number(self.warmup_ratio, "trainer.warmup_ratio", low=0, high=1, below=True)
        check_number(self.cache_mb, "trainer.cache_mb", low=0, unit="megabytes")
        if self.precision not in PRECISIONS:
            raise ContinualError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_device(self.device)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def precision_on(self, device: torch.device) -> str:
        """``fp32`` or ``bf16``: what :attr:`precision` means on ``device`` (``auto`` asks the hardware)."""
        return self.precision if self.precision != "auto" else _auto_precision(str(device))

    def autocast(self, device: torch.device):
        """bf16 autocast for matmuls (trained weights stay fp32, their master copy); a no-op context for fp32."""
        if self.precision_on(device) == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def frozen_dtype(self, device: torch.device) -> torch.dtype:
        """What a frozen backbone is held in on ``device``: bf16 under bf16, so that autocast casts none of its
        weights at each call (only the small trained ones); fp32 otherwise."""
        return torch.bfloat16 if self.precision_on(device) == "bf16" else torch.float32


def native_bf16(device: str) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 matmuls natively (GPU support; CPU flags avx512_bf16 or amx_bf16), and why.

    Without them bf16 is emulated and slower than fp32 (measured: several times slower on a CPU without
    avx512_bf16), so ``precision=auto`` only picks bf16 where this is true.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return supported, f"the GPU {'supports' if supported else 'lacks'} bf16"
    if kind != "cpu":
        return False, f"no bf16 rule for {kind} devices"
    found = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, slower than fp32)"


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: auto then keeps fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def _auto_precision(device: str) -> str:
    """What ``precision=auto`` means on ``device``; said once per process and device."""
    native, why = native_bf16(device)
    precision = "bf16" if native else "fp32"
    log.info("trainer.precision=auto: %s on %s (%s)", precision, device, why)
    return precision


def check_device(device: object) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine (one line if not)."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ContinualError(f"trainer.device must be auto, cpu, cuda[:N] or mps, got {device!r}")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            where = f"{count} CUDA device(s)" if count else f"no CUDA device (torch {torch.__version__})"
            raise ContinualError(f"trainer.device={device}: this machine has {where}; use trainer.device=auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ContinualError("trainer.device=mps: this machine has no MPS device; use trainer.device=auto or cpu")


def train_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of indices whose members have similar lengths."""
    order = rng.permutation(len(lengths))
    sizes = np.asarray(lengths)
    batches: list[np.ndarray] = []
    pool = batch_size * POOL_BATCHES
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Batches of indices over the split sorted by length (callers scatter results back by index)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def pad(token_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch to its longest member: (input_ids, attention_mask)."""
    width = max(len(ids) for ids in token_ids)
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, seq in enumerate(token_ids):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


IGNORED = -100  # target of positions the loss skips (cross_entropy's default ignore_index)


def token_targets(length: int, starts: np.ndarray, tags: np.ndarray) -> np.ndarray:
    """A token task's targets for one text of ``length`` token ids: each word's tag at its first sub-token,
    :data:`IGNORED` everywhere else (special tokens, later sub-tokens, words cut off by truncation)."""
    targets = np.full(length, IGNORED, dtype=np.int64)
    kept = starts >= 0
    targets[starts[kept]] = tags[kept]
    return targets


def pad_targets(targets: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Right-pad per-token targets to the batch's longest member with :data:`IGNORED` (as :func:`pad` pads ids)."""
    width = max(len(t) for t in targets)
    out = torch.full((len(targets), width), IGNORED, dtype=torch.long)
    for row, t in enumerate(targets):
        out[row, : len(t)] = torch.as_tensor(t)
    return out.to(device)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up then linear decay to zero, as in BERT fine-tuning."""
    warmup = max(1, int(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def iter_padded(
    tokens: Sequence[Sequence[int]], batches: list[np.ndarray], pad_id: int, device: torch.device
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (indices, input_ids, attention_mask) for each batch of indices."""
    for idx in batches:
        ids, mask = pad([tokens[k] for k in idx], pad_id, device)
        yield idx, ids, mask


Batch = TypeVar("Batch")
ParamGroups = Sequence[nn.Parameter] | Sequence[dict[str, Any]]  # what torch optimizers accept


@dataclass(frozen=True)
class Fitted:
    """What one call of :func:`fit` did: optimizer steps, the last loss, wall-clock seconds."""

    steps: int
    final_loss: float
    seconds: float


def _set_mode(modules: Iterable[nn.Module], train: bool) -> None:
    for module in modules:
        module.train(train)


class KeepBest:
    """The weights at their best score: :meth:`check` scores them (before training and after each epoch) and
    copies them when they beat every earlier check; :meth:`restore` puts the best back. The first of equal
    scores is kept: an epoch must improve on the validation split to replace what came before (early stopping's
    rule), so with a head fitted before training (``learner.head_init``) a task never ends below its start."""

    def __init__(self, params: Iterable[torch.Tensor], score: Callable[[], float]) -> None:
        self.params, self.score = list(params), score
        self.scores: list[float] = []
        self.best, self.kept, self._saved = -math.inf, -1, [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def check(self) -> None:
        value = self.score()
        self.scores.append(value)
        if value > self.best:
            self.best, self.kept = value, len(self.scores) - 1
            for saved, p in zip(self._saved, self.params):
                saved.copy_(p)

    @torch.no_grad()
    def restore(self) -> None:
        if 0 <= self.kept != len(self.scores) - 1:
            for saved, p in zip(self._saved, self.params):
                p.copy_(saved)


def _flat(params: ParamGroups) -> list[nn.Parameter]:
    return [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]


def fit(
    params: ParamGroups,
    epochs: Sequence[Sequence[Batch]],
    loss_of: Callable[[Batch], torch.Tensor],
    cfg: TrainerConfig,
    name: str,
    modules: Iterable[nn.Module] = (),
    progress: bool = True,
    on_loss: Callable[[int, float], None] | None = None,
    after_backward: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    after_epoch: Callable[[], None] | None = None,
) -> Fitted:
    """AdamW + linear warm-up/decay over ``epochs`` (lists of batches), minimising ``loss_of(batch)``.

    ``params`` (parameters, or param groups with their own ``lr``) require grad during the loop and
    are frozen again afterwards, their gradients dropped; ``modules`` are in train mode (dropout on)
    during the loop and in eval mode afterwards. Every ``cfg.log_every`` steps (and at the last)
    ``on_loss(step, loss)`` is called. ``after_backward`` may change the gradients before they are
    clipped (A-GEM); ``after_step`` runs after each optimizer step (DER++ fills its memory). A
    non-finite loss stops training with one line naming task ``name``. ``after_epoch`` runs at each
    epoch's end with ``modules`` in eval mode (:class:`KeepBest` scores the weights there).
    """
    flat = _flat(params)
    total = sum(len(e) for e in epochs)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = linear_schedule(optimizer, total, cfg.warmup_ratio)
    modules = list(modules)
    for p in flat:
        p.requires_grad_(True)
    _set_mode(modules, train=True)
    step, loss_value, start = 0, float("nan"), time.perf_counter()
    bar = tqdm(total=total, desc=f"train {name}", unit="batch", disable=not progress, leave=False)
    try:
        for epoch, batches in enumerate(epochs):
            for batch in batches:
                loss = loss_of(batch)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise ContinualError(
                        f"task '{name}': loss is {loss_value} at epoch {epoch + 1}, step {step}; "
                        "lower trainer.lr or use trainer.precision=fp32"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if after_backward is not None:
                    after_backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(flat, cfg.grad_clip)
                optimizer.step()
                schedule.step()
                if after_step is not None:
                    after_step()
                step += 1
                bar.update()
                if step % cfg.log_every == 0 or step == total:
                    bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_value:.3f}")
                    if on_loss is not None:
                        on_loss(step, loss_value)
            if after_epoch is not None:
                _set_mode(modules, train=False)
                after_epoch()
                _set_mode(modules, train=True)
    finally:
        bar.close()
        _set_mode(modules, train=False)
        for p in flat:  # frozen from now on: the gradients would only hold memory (as much as the weights)
            p.requires_grad_(False)
            p.grad = None
    return Fitted(step, loss_value, time.perf_counter() - start)
