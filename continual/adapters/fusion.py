"""AdapterFusion: a task's adapter output composed from its own adapter and frozen earlier ones, per site.

At every site, each source adapter ``j`` (earlier tasks' adapters, chosen by ``fusion.sources``, and the task's
own, last) turns the sublayer output ``h`` into its adapted output ``z_j = h + update_j(h)``. Fusion mixes them:

* ``attention`` (Pfeiffer et al., EACL 2021, the default): per token, a query from ``h``, a key and a value
  from each ``z_j``; ``o = sum_j softmax_j(Q h . K z_j) V z_j``. Query and key are ``hidden x hidden`` and start
  small and random (BERT's N(0, 0.02)), the value starts as the identity, so at first ``o`` is the mean of the
  sources' outputs. Computed without materialising the keys: ``Q h . K z_j = (K^T Q h) . z_j`` up to a
  term shared by all ``j`` (which the softmax ignores), and ``sum_j p_j V z_j = V (sum_j p_j z_j)``: two
  ``hidden x hidden`` products for the query and one for the value per token, whatever the number of sources.
  The per-token sums over sources are element-wise products summed: an einsum there runs as many tiny batched
  matrix products, slow in bf16 on a CPU (``scripts/bench_fusion.py --precision bf16``, ``top:3`` at T = 5:
  166 ms a step with einsums, 154-162 ms element-wise; the same speed in fp32).
* ``static``: one learned softmax weight per source and site, the same for every input (the earlier version).

A fused task's sources are fixed when it starts; its fusion weights train with its adapter and head and are
frozen with them, so its answers never change afterwards. Its file holds them (``fusion.*``, with the sources).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from continual.checks import check_number
from continual.errors import ContinualError

FUSION_KINDS = ("attention", "static")
FUSION_INITS = ("fresh", "similar")
ATTENTION_LR = 1e-4  # attention fusion's default learning rate (see FusionConfig.lr)
INIT_STD = 0.02  # BERT's initialiser for the query and key projections (the paper's "small random")


@dataclass(frozen=True)
class FusionConfig:
    """``learner.fusion`` (with ``learner.transfer=fusion``).

    ``kind``: ``attention`` (input-dependent, per token, as the paper) or ``static`` (one weight per source
    and site). ``sources``: which earlier adapters a new task fuses: ``all``, or ``top:M``, the ``M`` earlier
    tasks whose training texts are most similar (cosine of mean frozen features), so that the cost of a
    step stays flat as tasks accumulate. ``lr``: the fusion weights' learning rate (the adapter and head keep
    ``trainer.lr``); None: :data:`ATTENTION_LR` for attention (the paper trains fusion at 5e-5 to 1e-4; at the
    adapters' 5e-3 the value projection leaves the identity within a few steps: FWT -3.75 on capped
    clinc150_domains, seed 0), ``trainer.lr`` for static weights (as they were measured). ``temperature``: the
    attention softmax's temperature at a task's first training step, lowered linearly to 1 at its last (the
    ``adapters`` library's option starts at 50); 1 = no annealing. A fused task always answers at temperature 1.
    ``init``: where the fused task's own adapter starts: ``fresh`` (as ``transfer=none``) or ``similar`` (a copy
    of the most similar earlier task's adapter, as ``transfer=similar``). The paper fuses a target adapter that
    was already trained on its task; a copy of a trained neighbour is the closest a continual stream can start.
    """

    kind: str = "attention"
    sources: str = "all"
    lr: float | None = None
    temperature: float = 1.0
    init: str = "fresh"

    def __post_init__(self) -> None:
        if self.kind not in FUSION_KINDS:
            raise ContinualError(f"learner.fusion.kind must be one of {list(FUSION_KINDS)}, got {self.kind!r}")
        check_number(self.lr, "learner.fusion.lr", low=0, above=True, optional=True)
        check_number(self.temperature, "learner.fusion.temperature", low=1)
        if self.init not in FUSION_INITS:
            raise ContinualError(f"learner.fusion.init must be one of {list(FUSION_INITS)}, got {self.init!r}")
        if self.temperature != 1 and self.kind != "attention":
            raise ContinualError("learner.fusion.temperature anneals attention: it needs learner.fusion.kind=attention")
        if self.sources != "all" and not re.fullmatch(r"top:[1-9]\d*", str(self.sources)):
            raise ContinualError(
                f"learner.fusion.sources must be 'all' or 'top:M' with M >= 1 (e.g. top:3), got {self.sources!r}"
            )

    def learning_rate(self, trainer_lr: float) -> float:
        """The fusion weights' learning rate when the adapter's is ``trainer_lr``."""
        if self.lr is not None:
            return self.lr
        return ATTENTION_LR if self.kind == "attention" else trainer_lr

    @property
    def top(self) -> int | None:
        """``M`` of ``top:M``; None for ``all``."""
        return None if self.sources == "all" else int(self.sources.split(":")[1])


class SiteAttention(nn.Module):
    """The paper's fusion layer at one site: query, key and value projections (see the module docstring)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        for layer in (self.query, self.key):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)
        nn.init.eye_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def weights(self, out: torch.Tensor, adapted: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Each source's attention ``[sources, ...]`` for sublayer outputs ``out`` ``[..., hidden]`` and the
        sources' outputs ``adapted`` ``[sources, ..., hidden]``, at softmax ``temperature``."""
        probe = self.query(out) @ self.key.weight  # K^T (Q h + b_q): the key bias adds the same to every source
        return ((probe * adapted).sum(-1) / temperature).softmax(0)

    def forward(
        self, out: torch.Tensor, adapted: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused output and the attention ``[sources, ...]`` it used (see :meth:`weights`)."""
        weights = self.weights(out, adapted, temperature)
        return self.value((weights.unsqueeze(-1) * adapted).sum(0)), weights


class Fusion(nn.Module):
    """One fused task's composition: its sources (``sources``, the task's own adapter last) and, per site, how
    their outputs are mixed."""

    sources: torch.Tensor  # a buffer: saved in the task's file

    def __init__(self, kind: str, sites: Sequence[str], hidden: int, sources: Sequence[int]) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("sources", torch.tensor(list(sources), dtype=torch.long))
        if kind == "static":
            self.mix: nn.Module = nn.ParameterDict({s: nn.Parameter(torch.zeros(len(sources))) for s in sites})
        else:
            self.mix = nn.ModuleDict({s: SiteAttention(hidden) for s in sites})
        self.recorded: list[torch.Tensor] | None = None  # a list: every forward appends its weights [..., sources]
        self.temperature = 1.0  # of the attention softmax; above 1 only while annealed in training (not saved)

    @property
    def source_list(self) -> list[int]:
        return [int(j) for j in self.sources.tolist()]

    def forward(self, site: str, out: torch.Tensor, adapted: list[torch.Tensor]) -> torch.Tensor:
        """The fused output at ``site`` from the sublayer output ``out`` and each source's adapted output."""
        stacked = torch.stack(adapted)
        if self.kind == "static":
            weights = cast(nn.ParameterDict, self.mix)[site].softmax(0)
            if self.recorded is not None:
                self.recorded.append(weights.detach().expand(*out.shape[:-1], -1))
            return out + torch.einsum("s,s...h->...h", weights, stacked - out)
        fused, weights = cast(nn.ModuleDict, self.mix)[site](out, stacked, self.temperature)
        if self.recorded is not None:
            self.recorded.append(weights.detach().movedim(0, -1))
        return fused
