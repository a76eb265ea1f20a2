"""LoRA (Hu et al. 2022): a low-rank update ``x -> B A x * alpha / rank`` added to chosen linear projections."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from continual.adapters.sites import check_skip_layers, named_sites
from continual.checks import check_int, check_number
from continual.errors import ContinualError


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank updates on the linear modules named in ``targets`` (last attribute name, e.g. query/value).

    ``B`` starts at zero, so a new adapter begins as the identity; ``skip_layers`` as for bottlenecks.
    """

    hook: ClassVar[str] = "output"  # maps (site input, site output) -> output

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "value")
    skip_layers: int = 0

    def __post_init__(self) -> None:
        check_int(self.rank, "adapter.rank", low=1)
        check_number(self.alpha, "adapter.alpha", low=0, above=True)
        check_number(self.dropout, "adapter.dropout", low=0, high=1, below=True)
        if isinstance(self.targets, str) or not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ContinualError(f"adapter.targets must be a non-empty list of module names, got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        check_skip_layers(self.skip_layers)

    def sites(self, backbone) -> dict[str, nn.Module]:
        return named_sites(backbone, self.skip_layers, "adapter.targets", self.targets, (nn.Linear,))

    def make(self, sites: dict[str, nn.Module], hidden_size: int) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                name: LoRA(m.in_features, m.out_features, self.rank, self.alpha, self.dropout)
                for name, m in _linear(sites).items()
            }
        )

    def row_weights(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        m = cast(LoRA, module)  # what make() built
        return m.A, m.B

    def run_rows(
        self, module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """Row b: out + dropout(x) A_bᵀ B_bᵀ · alpha/rank with each row's own A and B, as two ``bmm``."""
        a, b = weights  # [B, rank, in], [B, out, rank]
        m = cast(LoRA, module)  # dropout and scale are the same in every task's module
        return out + torch.bmm(torch.bmm(m.dropout(x), a.transpose(1, 2)), b.transpose(1, 2)) * m.scale


def _linear(sites: dict[str, nn.Module]) -> dict[str, nn.Linear]:
    """The sites as the linear modules :meth:`LoRAConfig.sites` found them to be."""
    return {name: m for name, m in sites.items() if isinstance(m, nn.Linear)}


class LoRA(nn.Module):
    """out + dropout(x) Aᵀ Bᵀ · alpha/rank, with A Kaiming-uniform and B zero."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + (self.dropout(x) @ self.A.T @ self.B.T) * self.scale
