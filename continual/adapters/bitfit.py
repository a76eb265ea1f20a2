"""BitFit (Ben Zaken et al. 2022) kept per task: a learned shift of every bias term, zero at the start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from continual.adapters.sites import check_skip_layers, named_sites
from continual.errors import ContinualError


@dataclass(frozen=True)
class BitFitConfig:
    """Per-task bias shifts on the linear and LayerNorm modules named in ``targets`` ('*' = all of them).

    Adding a learned vector to a module's output is the same as training its bias, so the frozen
    backbone stays shared and each task keeps only its own shifts (a few thousand numbers per layer).
    """

    hook: ClassVar[str] = "output"  # maps (site input, site output) -> output

    targets: tuple[str, ...] = ("*",)
    skip_layers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.targets, str) or not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ContinualError(
                f"adapter.targets must be a non-empty list of module names or ['*'], got {self.targets!r}"
            )
        object.__setattr__(self, "targets", tuple(self.targets))
        check_skip_layers(self.skip_layers)

    def sites(self, backbone) -> dict[str, nn.Module]:
        sites = named_sites(backbone, self.skip_layers, "adapter.targets", self.targets, (nn.Linear, nn.LayerNorm))
        return {name: m for name, m in sites.items() if getattr(m, "bias", None) is not None}

    def make(self, sites: dict[str, nn.Module], hidden_size: int) -> nn.ModuleDict:
        return nn.ModuleDict({name: BiasShift(_bias_size(m)) for name, m in sites.items()})

    def row_weights(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        return (cast(BiasShift, module).delta,)

    def run_rows(
        self, module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """Row b: out + delta_b (broadcast over its tokens)."""
        (delta,) = weights  # [B, size]
        return out + delta.view(delta.shape[0], *([1] * (out.dim() - 2)), delta.shape[1])


def _bias_size(module: Any) -> int:
    """Length of a linear or LayerNorm module's bias (:meth:`BitFitConfig.sites` keeps only those with one)."""
    return int(module.bias.shape[0])


class BiasShift(nn.Module):
    """out + delta (delta starts at zero)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.delta
