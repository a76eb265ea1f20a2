"""The continual-learning techniques of the single-head baselines, one small class each (Avalanche-style plugins).

A technique changes how :class:`continual.learners.single_head.SingleHeadLearner` trains, through
the hooks of :class:`Technique`; the learner's loop is the same for all of them:

    for each batch of the new task:
        batch += technique.replayed(...)            # ER: remembered examples join the batch
        loss = cross-entropy over every class seen so far
        loss += technique.penalty(...)              # DER++, LwF, EWC
        loss.backward(); technique.after_backward() # A-GEM: project the gradient
        optimizer step; technique.after_step(...)   # DER++: offer the batch to its memory
    technique.end_task(...)                         # ER, A-GEM: fill the memory; EWC: Fisher

* **ER** (experience replay; Chaudhry et al. 2019): a bounded episodic memory of earlier examples
  (reservoir or per-class); every batch of the new task travels with a random batch of it.
* **DER++** (dark experience replay; Buzzega et al. 2020): a reservoir of examples with the logits the
  model gave them when they were stored; the loss adds ``alpha`` * MSE between today's and the
  stored logits on one memory batch and ``beta`` * cross-entropy on another.
* **LwF** (learning without forgetting; Li & Hoiem 2017): before a task, the model's logits over the
  classes seen so far are recorded on the new task's inputs; training adds ``lambda`` * T² *
  KL(recorded || current) at temperature ``T``. No memory.
* **EWC** (online EWC; Kirkpatrick et al. 2017, Schwarz et al. 2018): a diagonal Fisher of the shared
  weights, decayed by ``decay`` and summed over tasks, anchors them: ``lambda/2 * sum F (w - w*)^2``.
* **A-GEM** (Chaudhry et al. 2019): a memory as ER's; when the new batch's gradient points against
  the gradient on a memory batch, it is projected so that the memory loss does not rise.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from continual.checks import check_int, check_number
from continual.errors import ContinualError
from continual.learners.memory import EpisodicMemory, MemoryConfig

Examples = tuple[list[list[int]], np.ndarray]  # token ids and class ids (over every class seen)
Forward = Callable[[list[list[int]]], torch.Tensor]  # token ids -> logits over every class seen, with gradients


def options(cls: Any, values: Mapping[str, Any] | None, field: str) -> Any:
    """A technique's options dataclass from its config node (unknown keys are one error line)."""
    values = dict(values or {})
    known = {f.name.rstrip("_") for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ContinualError(f"{field}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**{(k + "_" if k == "lambda" else k): v for k, v in values.items()})


class Technique(Protocol):
    """What the single-head learner's loop asks of a technique (a hook that has nothing to do returns None)."""

    def replayed(self, size: int, rng: np.random.Generator) -> Examples | None:
        """Examples to train on together with the new task's batch."""
        ...

    def penalty(
        self, forward: Forward, batch: Examples, logits: torch.Tensor, index: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor | None:
        """A loss to add to the batch's cross-entropy (``index``: the batch's positions in the task's data)."""
        ...

    def after_backward(self, forward: Forward, params: Sequence[nn.Parameter], rng: np.random.Generator) -> None: ...

    def after_step(self, batch: Examples, logits: torch.Tensor, rng: np.random.Generator) -> None: ...

    def start_task(self, record: Callable[[list[list[int]]], torch.Tensor], tokens: list[list[int]]) -> None:
        """Before a task's classes join the head; ``record(tokens)`` gives today's logits (no gradients)."""
        ...

    def end_task(self, task: int, data: Examples, loss_of: Callable[[int], torch.Tensor]) -> None:
        """After the task; ``loss_of(i)`` is the loss of the task's example ``i`` (for Fisher estimates)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...


class NoTechnique:
    """Plain training (sequential fine-tuning): every hook does nothing."""

    def replayed(self, size: int, rng: np.random.Generator) -> Examples | None:
        return None

    def penalty(
        self, forward: Forward, batch: Examples, logits: torch.Tensor, index: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor | None:
        return None

    def after_backward(self, forward: Forward, params: Sequence[nn.Parameter], rng: np.random.Generator) -> None:
        pass

    def after_step(self, batch: Examples, logits: torch.Tensor, rng: np.random.Generator) -> None:
        pass

    def start_task(self, record: Callable[[list[list[int]]], torch.Tensor], tokens: list[list[int]]) -> None:
        pass

    def end_task(self, task: int, data: Examples, loss_of: Callable[[int], torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        pass


class Replay(NoTechnique):
    """ER: a bounded episodic memory, filled after each task, replayed in every batch."""

    def __init__(self, config: MemoryConfig, seed: int) -> None:
        self.memory = EpisodicMemory(config, seed)

    def _sample(self, size: int, rng: np.random.Generator) -> Examples | None:
        if not len(self.memory):
            return None
        chosen = self.memory.sample(self.memory.config.batch_size or size, rng)
        return [self.memory.tokens[i] for i in chosen], self.memory.labels[chosen]

    def replayed(self, size: int, rng: np.random.Generator) -> Examples | None:
        return self._sample(size, rng)

    def end_task(self, task: int, data: Examples, loss_of: Callable[[int], torch.Tensor]) -> None:
        self.memory.add(task, *data)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.memory.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.memory.load_state_dict(state)


class AGEM(Replay):
    """A-GEM: the memory is not trained on; its gradient only constrains the new task's gradient."""

    def replayed(self, size: int, rng: np.random.Generator) -> Examples | None:
        return None

    def after_backward(self, forward: Forward, params: Sequence[nn.Parameter], rng: np.random.Generator) -> None:
        batch = self._sample(self.memory.config.batch_size or 32, rng)
        if batch is None:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        current = torch.cat([g.flatten() for g in grads])
        tokens, labels = batch
        targets = torch.as_tensor(labels, device=current.device)
        reference = torch.autograd.grad(
            nn.functional.cross_entropy(forward(tokens), targets), list(params), allow_unused=True
        )
        ref = torch.cat([(r if r is not None else torch.zeros_like(p)).flatten() for r, p in zip(reference, params)])
        dot = torch.dot(current, ref)
        if dot < 0:  # the step would raise the memory's loss: remove that component
            projected = current - dot / torch.dot(ref, ref).clamp_min(1e-12) * ref
            offset = 0
            for p in params:
                p.grad = projected[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()


@dataclass(frozen=True)
class DerppConfig:
    """DER++ weights: ``alpha`` on the logit-matching term, ``beta`` on the memory's cross-entropy."""

    alpha: float = 0.3
    beta: float = 0.5

    def __post_init__(self) -> None:
        check_number(self.alpha, "learner.derpp.alpha", low=0)
        check_number(self.beta, "learner.derpp.beta", low=0)


class DarkReplay(NoTechnique):
    """DER++: a reservoir of (tokens, class, logits when stored), offered every training batch."""

    def __init__(self, config: MemoryConfig, options: DerppConfig, seed: int) -> None:
        self.size, self.batch_size, self.options = config.size, config.batch_size, options
        self.tokens: list[list[int]] = []
        self.labels: list[int] = []
        self.logits: list[np.ndarray] = []  # over the classes seen when stored
        self.seen = 0

    def after_step(self, batch: Examples, logits: torch.Tensor, rng: np.random.Generator) -> None:
        values = logits.detach().float().cpu().numpy()
        for ids, label, z in zip(batch[0], batch[1].tolist(), values):
            self.seen += 1
            slot = len(self.tokens) if len(self.tokens) < self.size else int(rng.integers(self.seen))
            if slot >= self.size:
                continue
            if slot == len(self.tokens):
                self.tokens.append([])
                self.labels.append(0)
                self.logits.append(z)
            self.tokens[slot], self.labels[slot], self.logits[slot] = list(ids), int(label), z.copy()

    def penalty(
        self, forward: Forward, batch: Examples, logits: torch.Tensor, index: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor | None:
        if not self.tokens:
            return None
        n = min(self.batch_size or len(index), len(self.tokens))
        first, second = (rng.choice(len(self.tokens), size=n, replace=False) for _ in range(2))
        now = forward([self.tokens[i] for i in first])
        match = torch.stack(
            [
                ((now[r, : len(self.logits[i])] - torch.as_tensor(self.logits[i], device=now.device)).pow(2).mean())
                for r, i in enumerate(first)
            ]
        ).mean()
        targets = torch.as_tensor([self.labels[i] for i in second], device=now.device)
        recall = nn.functional.cross_entropy(forward([self.tokens[i] for i in second]), targets)
        return self.options.alpha * match + self.options.beta * recall

    def state_dict(self) -> dict[str, torch.Tensor]:
        lengths = [len(z) for z in self.logits]
        return {
            "tokens": torch.tensor([t for ids in self.tokens for t in ids], dtype=torch.long),
            "token_lengths": torch.tensor([len(ids) for ids in self.tokens], dtype=torch.long),
            "labels": torch.tensor(self.labels, dtype=torch.long),
            "logits": torch.tensor(np.concatenate(self.logits) if self.logits else np.zeros(0), dtype=torch.float32),
            "logit_lengths": torch.tensor(lengths, dtype=torch.long),
            "seen": torch.tensor([self.seen]),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.tokens = _split(state["tokens"].tolist(), state["token_lengths"].tolist())
        self.labels = state["labels"].tolist()
        flat = state["logits"].numpy()
        self.logits = [np.asarray(z, dtype=np.float32) for z in _split(list(flat), state["logit_lengths"].tolist())]
        self.seen = int(state["seen"][0])


def _split(flat: list, lengths: list[int]) -> list[list]:
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
    return [list(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


@dataclass(frozen=True)
class LwfConfig:
    """LwF: distillation weight ``lambda_`` (config key ``lambda``) and softmax temperature."""

    lambda_: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        check_number(self.lambda_, "learner.lwf.lambda", low=0)
        check_number(self.temperature, "learner.lwf.temperature", low=0, above=True)


class Distillation(NoTechnique):
    """LwF: the previous model's logits on the new task's inputs, recorded before training, are kept."""

    def __init__(self, options: LwfConfig) -> None:
        self.options = options
        self.recorded: torch.Tensor | None = None

    def start_task(self, record: Callable[[list[list[int]]], torch.Tensor], tokens: list[list[int]]) -> None:
        self.recorded = record(tokens) if tokens else None

    def penalty(
        self, forward: Forward, batch: Examples, logits: torch.Tensor, index: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor | None:
        if self.recorded is None or self.recorded.shape[1] == 0:
            return None
        T, old = self.options.temperature, self.recorded[torch.as_tensor(index)].to(logits.device)
        now = logits[: len(index), : old.shape[1]] / T
        kl = nn.functional.kl_div(
            now.log_softmax(-1), (old / T).log_softmax(-1), log_target=True, reduction="batchmean"
        )
        return self.options.lambda_ * T * T * kl


@dataclass(frozen=True)
class EWCConfig:
    """Online EWC: penalty strength ``lambda_`` (config key ``lambda``), examples per Fisher estimate (0 = all),
    and ``decay``, how much of the earlier tasks' Fisher is kept at each new task (1 = sum, as EWC)."""

    lambda_: float = 1000.0
    fisher_samples: int = 256
    decay: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.lambda_, "learner.ewc.lambda", low=0)
        check_int(self.fisher_samples, "learner.ewc.fisher_samples", low=0)
        check_number(self.decay, "learner.ewc.decay", low=0, high=1)


class EWC(NoTechnique):
    """The accumulated diagonal Fisher and the anchor of ``params``, and the quadratic penalty around them."""

    def __init__(self, options: EWCConfig, params: Sequence[tuple[str, nn.Parameter]], seed: int) -> None:
        self.options, self.params, self.seed = options, list(params), seed
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(
        self, forward: Forward, batch: Examples, logits: torch.Tensor, index: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor | None:
        if not self.fisher:
            return None
        terms = [((p - self.anchor[n]).pow(2) * self.fisher[n]).sum() for n, p in self.params]
        return 0.5 * self.options.lambda_ * functools.reduce(operator.add, terms)

    def end_task(self, task: int, data: Examples, loss_of: Callable[[int], torch.Tensor]) -> None:
        """Add the Fisher of the task just learned (squared per-example gradients) and re-anchor here."""
        n = self.options.fisher_samples
        chosen = np.random.default_rng([self.seed, task, 2]).permutation(len(data[0]))[: n or None]
        estimate = {name: torch.zeros_like(p) for name, p in self.params}
        tensors = [p for _, p in self.params]
        for p in tensors:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                for i in chosen.tolist():
                    grads = torch.autograd.grad(loss_of(i), tensors, allow_unused=True)
                    for (name, _), g in zip(self.params, grads):
                        if g is not None:  # e.g. a pooler that mean pooling never uses
                            estimate[name] += g.detach().pow(2)
        finally:
            for p in tensors:
                p.requires_grad_(False)
        for name, f in estimate.items():
            old = self.fisher.get(name)
            new = f / max(1, len(chosen))
            self.fisher[name] = new if old is None else self.options.decay * old + new
        self.reanchor()

    def reanchor(self) -> None:
        """The anchor becomes the current parameters (after a task, or after restoring them)."""
        self.anchor = {n: p.detach().clone() for n, p in self.params}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The Fisher only: the anchor equals the shared parameters saved beside it (both after the last task)."""
        return {f"fisher.{n}": f.detach().cpu().contiguous() for n, f in self.fisher.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        device = self.params[0][1].device if self.params else torch.device("cpu")
        self.fisher = {n[len("fisher.") :]: t.to(device) for n, t in state.items() if n.startswith("fisher.")}
        self.reanchor()
