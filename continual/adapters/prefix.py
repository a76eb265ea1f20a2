"""Prefix tuning (Li & Liang 2021; per task as in EPI, Wang et al. 2023): learned key/value prefixes per layer.

Every routed example attends, in each adapted layer, to ``length`` extra key/value positions that
belong to its task. That changes the attention computation itself, so the adapted self-attention
modules get a forward of ours (query/key/value projections of the backbone, then PyTorch's
scaled-dot-product attention over [prefix; tokens]); without routed prefixes they run their own
forward untouched. Encoders whose self-attention has no ``query``/``key``/``value`` linear modules
(BERT, RoBERTa, ELECTRA, MiniLM have them) are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from continual.adapters.sites import adapted_layers, check_skip_layers
from continual.checks import check_int, check_number
from continual.errors import ContinualError

PROJECTIONS = ("query", "key", "value")


@dataclass(frozen=True)
class PrefixConfig:
    """``length`` learned key and value vectors per adapted layer (``skip_layers`` as for bottlenecks)."""

    length: int = 16
    init_std: float = 0.02
    skip_layers: int = 0
    hook: ClassVar[str] = "attention"  # replaces the attention computation of its sites

    def __post_init__(self) -> None:
        check_int(self.length, "adapter.length", low=1)
        check_number(self.init_std, "adapter.init_std", low=0, above=True)
        check_skip_layers(self.skip_layers)

    def sites(self, backbone) -> dict[str, nn.Module]:
        """Each adapted layer's self-attention module (the one holding query/key/value projections)."""
        sites = {}
        for i, layer in adapted_layers(backbone, self.skip_layers):
            found = [m for m in layer.modules() if all(isinstance(getattr(m, p, None), nn.Linear) for p in PROJECTIONS)]
            if len(found) != 1 or not hasattr(found[0], "num_attention_heads"):
                raise ContinualError(
                    f"adapter=prefix: backbone '{backbone.name}' ({getattr(backbone.model.config, 'model_type', '?')}) "
                    "has no BERT-style self-attention with query/key/value projections; prefix tuning supports "
                    "bert, roberta, electra and similar encoders; use adapter=lora or a bottleneck adapter"
                )
            sites[f"{i}_attention"] = found[0]
        return sites

    def make(self, sites: dict[str, nn.Module], hidden_size: int) -> nn.ModuleDict:
        return nn.ModuleDict({name: Prefix(self.length, _width(m), self.init_std) for name, m in sites.items()})

    def row_weights(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        """Prefixes change attention itself (:class:`PrefixAttention` runs each segment): no batched form."""
        return ()

    def run_rows(
        self, module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError("prefix tuning has no batched form (row_weights is empty)")


def _width(attention: Any) -> int:
    """Width of one self-attention module's key projection (a BERT-style module, as :meth:`sites` checked)."""
    return int(attention.key.out_features)


class Prefix(nn.Module):
    """Key and value prefixes ``[length, projection width]`` of one layer."""

    def __init__(self, length: int, width: int, init_std: float) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.randn(length, width) * init_std)
        self.values = nn.Parameter(torch.randn(length, width) * init_std)


def _allowed(mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """The backbone's attention mask (None, boolean, or additive float) as booleans ``[B, 1, q, L]``."""
    if mask is None:
        return torch.ones(batch, 1, 1, length, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    while mask.dim() < 4:
        mask = mask.unsqueeze(1)
    return mask


class PrefixAttention:
    """Replaces one self-attention module's forward while installed; :meth:`remove` restores it."""

    def __init__(
        self, module: nn.Module, site: str, prefixes: Callable[[str], Sequence[tuple[Prefix | None, int, int]]]
    ):
        self.module, self.site, self.prefixes = module, site, prefixes
        self.original = module.forward
        module.forward = self.forward

    def remove(self) -> None:
        self.module.forward = self.original

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        segments = self.prefixes(self.site)
        if not segments or all(p is None for p, _, _ in segments):
            return self.original(hidden_states, attention_mask, *args, **kwargs)
        m: Any = self.module  # a BERT-style self-attention module (query/key/value, heads, dropout)
        batch, length, _ = hidden_states.shape
        heads, size = m.num_attention_heads, m.attention_head_size
        first = next(p for p, _, _ in segments if p is not None)
        plen = first.keys.shape[0]
        keys, values, valid = [], [], []
        for prefix, start, stop in segments:
            n = stop - start
            if prefix is None:  # examples routed to no adapter attend to their tokens only
                zeros = first.keys.new_zeros(n, plen, first.keys.shape[1])
                keys.append(zeros)
                values.append(zeros)
                valid.append(torch.zeros(n, plen, dtype=torch.bool))
            else:
                keys.append(prefix.keys.expand(n, -1, -1))
                values.append(prefix.values.expand(n, -1, -1))
                valid.append(torch.ones(n, plen, dtype=torch.bool))

        def split(x: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, size]
            return x.reshape(batch, -1, heads, size).transpose(1, 2)

        query, key, value = m.query(hidden_states), m.key(hidden_states), m.value(hidden_states)
        q = split(query)  # under bf16 autocast the projections are bf16: the prefixes follow their dtype
        k = split(torch.cat([torch.cat(keys).to(key.dtype), key], dim=1))
        v = split(torch.cat([torch.cat(values).to(value.dtype), value], dim=1))
        allowed = _allowed(attention_mask, batch, length, hidden_states.device)
        prefix_ok = torch.cat(valid).to(hidden_states.device)[:, None, None, :].expand(-1, 1, allowed.shape[2], -1)
        mask = torch.cat([prefix_ok, allowed.expand(batch, 1, allowed.shape[2], length)], dim=-1)
        dropout = m.dropout.p if m.training else 0.0
        out = _attend(q, k, v, mask, dropout, getattr(m, "scaling", size**-0.5))
        return out.transpose(1, 2).reshape(batch, length, heads * size), None


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, dropout: float, scale: float
) -> torch.Tensor:
    """Scaled dot-product attention over the keys ``allowed`` marks. On a CPU in bf16 as plain matmuls and
    softmax: torch's fused kernel trains bf16 several times slower there (as the backbone's attention, see
    :meth:`Backbone.place`)."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale)
    weights = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf")).softmax(-1)
    return nn.functional.dropout(weights, dropout) @ v
