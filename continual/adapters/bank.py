"""A bank of per-task adapters hooked into a frozen backbone, routable per example.

Routing is data, not model surgery: before a forward pass the caller sets *segments*, contiguous
slices of the batch that each belong to one adapter (``[(adapter, start, stop), ...]``). Every hooked
projection then runs each adapter once on its own slice. A batch that mixes many tasks therefore
costs one backbone pass plus one small matmul pair per adapter and site, not one pass per adapter.
Without segments (or with adapter ``None``) the backbone runs plain, which routers use for features.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from continual.adapters.bottleneck import BottleneckConfig, TaskAdapter
from continual.backbone import Backbone

Segment = tuple[int | None, int, int]


class AdapterBank(nn.Module):
    """Per-task :class:`TaskAdapter` modules plus the hooks that apply the routed one(s)."""

    def __init__(self, backbone: Backbone, config: BottleneckConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = backbone.hidden_size
        self.adapters = nn.ModuleList()
        self._segments: Sequence[Segment] = ()
        self._site_names = list(backbone.sites(config.sites))
        self._handles = [
            module.register_forward_hook(self._hook(name)) for name, module in backbone.sites(config.sites).items()
        ]

    def _hook(self, site: str):
        def apply(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
            segments = self._segments
            if not segments:
                return None
            if len(segments) == 1:
                adapter = segments[0][0]
                return None if adapter is None else self.adapters[adapter][site](out)
            pieces = [
                out[start:stop] if adapter is None else self.adapters[adapter][site](out[start:stop])
                for adapter, start, stop in segments
            ]
            return torch.cat(pieces, dim=0)

        return apply

    def add(self) -> int:
        """Allocate a fresh adapter (identity at start) and return its index."""
        self.adapters.append(TaskAdapter(self._site_names, self.hidden_size, self.config))
        return len(self.adapters) - 1

    @contextmanager
    def routed(self, segments: Sequence[Segment]) -> Iterator[None]:
        """Apply ``segments`` to every forward pass inside the block."""
        previous, self._segments = self._segments, tuple(segments)
        try:
            yield
        finally:
            self._segments = previous

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def segments_for(adapter_ids: torch.Tensor) -> tuple[torch.Tensor, list[Segment]]:
    """Sort a batch by adapter: returns the permutation and the contiguous segments of the sorted batch."""
    order = torch.argsort(adapter_ids, stable=True)
    sorted_ids = adapter_ids[order]
    values, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    segments: list[Segment] = []
    start = 0
    for value, count in zip(values.tolist(), counts.tolist()):
        segments.append((None if value < 0 else value, start, start + count))
        start += count
    return order, segments
