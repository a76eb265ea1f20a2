"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) as small, self-contained modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from continual.adapters.sites import check_skip_layers, layer_sites
from continual.checks import check_int, check_number
from continual.errors import ContinualError

PLACEMENTS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class BottleneckConfig:
    """Where bottleneck adapters go and how wide they are.

    ``placement``: ``houlsby`` = after the attention output projection and after the feed-forward
    output projection of every layer; ``pfeiffer`` = after the feed-forward one only.
    Width: ``bottleneck_dim`` if set, else ``hidden_size // reduction_factor``.
    ``skip_layers=k`` leaves the lowest k layers without adapters (AdapterDrop, Rücklé et al. 2021):
    fewer parameters, no backward pass through those layers, and their outputs can be cached.
    """

    hook: ClassVar[str] = "output"  # maps (site input, site output) -> output

    placement: str = "pfeiffer"
    reduction_factor: float = 16
    bottleneck_dim: int | None = None
    non_linearity: str = "relu"
    skip_layers: int = 0

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ContinualError(f"adapter.placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}")
        if self.non_linearity not in ACTIVATIONS:
            raise ContinualError(
                f"adapter.non_linearity must be one of {sorted(ACTIVATIONS)}, got {self.non_linearity!r}"
            )
        if self.bottleneck_dim is None:
            check_number(self.reduction_factor, "adapter.reduction_factor", low=0, above=True)
        else:
            check_int(self.bottleneck_dim, "adapter.bottleneck_dim", low=1)
        check_skip_layers(self.skip_layers)

    def width(self, hidden_size: int) -> int:
        return self.bottleneck_dim or max(1, int(hidden_size // self.reduction_factor))

    def sites(self, backbone) -> dict[str, nn.Module]:
        """The output projections to hook, keyed ``'<layer>_<attention|ffn>'``."""
        paths = {"attention": backbone.layout.attention_output, "ffn": backbone.layout.ffn_output}
        return layer_sites(
            backbone, self.skip_layers, "adapter", {where: paths[where] for where in PLACEMENTS[self.placement]}
        )

    def make(self, sites: dict[str, nn.Module], hidden_size: int) -> nn.ModuleDict:
        """One task's adapters: a :class:`Bottleneck` per site."""
        width = self.width(hidden_size)
        return nn.ModuleDict({name: Bottleneck(hidden_size, width, self.non_linearity) for name in sites})

    def row_weights(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        m = cast(Bottleneck, module)  # what make() built
        return m.down.weight, m.down.bias, m.up.weight, m.up.bias

    def run_rows(
        self, module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """Row b: out + up_b(act(down_b(out))) with each row's own weights, as two ``baddbmm``."""
        down, down_bias, up, up_bias = weights  # [B, width, hidden], [B, width], [B, hidden, width], [B, hidden]
        act = cast(Bottleneck, module).act  # one config: every task's module has the same activation
        hidden = act(torch.baddbmm(down_bias.unsqueeze(1), out, down.transpose(1, 2)))
        return out + torch.baddbmm(up_bias.unsqueeze(1), hidden, up.transpose(1, 2))


class Bottleneck(nn.Module):
    """out + up(act(down(out))); ``up`` starts at zero so a new adapter begins as the identity."""

    def __init__(self, hidden_size: int, width: int, non_linearity: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, width)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.up(self.act(self.down(out)))
