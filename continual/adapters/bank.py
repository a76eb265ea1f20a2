"""A bank of per-task adapters attached to a frozen backbone, routable per example.

Routing is data, not model surgery: before a forward pass the caller sets *segments*, contiguous
slices of the batch that each belong to one adapter (``[(adapter, start, stop), ...]``). Every
adapted module then runs each adapter once on its own slice. A batch that mixes many tasks therefore
costs one backbone pass plus one small computation per adapter and site, not one pass per adapter.
From :data:`BATCHED_FROM` segments on, kinds that can (bottleneck, LoRA, BitFit) run all of a site's
adapters as one batched computation instead: each example's adapter weights are gathered and applied
with ``bmm``, so a batch of 128 adapters costs a few kernels per site rather than 128 small ones.
Without segments (or with adapter ``None``) the backbone runs plain, which routers use for features.

Any adapter kind fits: its config implements :class:`AdapterKind`. Output adapters (bottleneck,
LoRA, BitFit) map ``(site input, site output) -> new output`` through a forward hook; prefix tuning
replaces the attention computation of its sites while attached.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from continual.adapters.prefix import PrefixAttention
from continual.adapters.sites import layer_of
from continual.errors import ContinualError

if TYPE_CHECKING:
    from continual.backbone import Backbone

Segment = tuple[int | None, int, int]
# segments from which sites run batched: equal to the loop at 4-10 segments, ahead at 70 (scripts/bench_scale.py)
BATCHED_FROM = 16


class AdapterKind(Protocol):
    """The config of an adapter kind: a frozen dataclass that validates its fields in ``__post_init__``.

    What a new kind must provide (see ``bottleneck.py`` for the shortest complete example):

    * ``hook``: ``"output"`` if each task's module at a site maps ``(site input, site output) -> new
      output`` (a forward hook applies it), or ``"attention"`` if it changes the attention computation
      of its site (prefix tuning; the bank then installs :class:`PrefixAttention` there).
    * ``skip_layers``: adapters only from this layer up (AdapterDrop); lower layers stay plain and
      their outputs may be cached.
    * :meth:`sites`: the backbone modules it attaches to, keyed ``'<layer>_<name>'``; a target that
      does not exist is one error line.
    * :meth:`make`: one task's modules, one per site, with the same keys.
    * :meth:`run_many`: an output kind's modules of many tasks at one site applied in one batched
      computation, equal to running each on its rows; None if the kind cannot (the bank then loops).
    """

    hook: str
    skip_layers: int

    def sites(self, backbone: Backbone) -> dict[str, nn.Module]: ...

    def make(self, sites: dict[str, nn.Module], hidden_size: int) -> nn.ModuleDict: ...

    def run_many(
        self, modules: Sequence[nn.Module], index: torch.Tensor, x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor | None:
        """Row ``b`` through ``modules[index[b]]``: ``(x, out) -> new out`` for a batch mixing adapters."""
        ...


def describe(config: AdapterKind) -> str:
    """An adapter config as JSON (kind and fields): saved with adapters and checked when they are loaded."""
    return json.dumps({"kind": type(config).__name__, **dataclasses.asdict(config)})  # type: ignore[call-overload]


class AdapterBank(nn.Module):
    """Per-task adapter modules (one :class:`nn.ModuleDict` of sites per task) and what applies the routed ones."""

    def __init__(self, backbone: Backbone, config: AdapterKind) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = backbone.hidden_size
        self.adapters = nn.ModuleList()
        # AdapterFusion-style mixtures: fusion[str(k)][site] = logits over adapters 0..k (task k's own last)
        self.fusion = nn.ModuleDict()
        self._segments: Sequence[Segment] = ()
        sites = config.sites(backbone)
        self._site_modules = sites
        self.first_layer = min(layer_of(name) for name in sites)  # layers below it never see an adapter
        self._handles: list[Any] = (  # what remove_hooks undoes: prefix attentions or forward hooks
            [PrefixAttention(module, name, self._routed_sites) for name, module in sites.items()]
            if config.hook == "attention"
            else [module.register_forward_hook(self._hook(name)) for name, module in sites.items()]
        )

    def module(self, k: int, site: str) -> Any:
        """Task ``k``'s module at ``site`` (as its kind's ``make`` built it)."""
        return self.adapters[k][site]  # type: ignore[index]  # adapters[k] is the ModuleDict make() returned

    def _routed_sites(self, site: str) -> list[tuple[Any, int, int]]:
        return [(None if a is None else self.module(a, site), start, stop) for a, start, stop in self._segments]

    def _run(self, k: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``k`` at ``site``; a fused adapter adds the softmax-weighted updates of adapters 0..k."""
        if str(k) not in self.fusion:
            return self.module(k, site)(x, out)
        weights = self.fusion[str(k)][site].softmax(0)  # type: ignore[index]  # a ParameterDict per fused task
        return out + sum(w * (self.module(j, site)(x, out) - out) for j, w in enumerate(weights))

    def _batched(self, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """Every routed row through its adapter in one batched computation (None: the kind cannot, or a
        segment is fused, which mixes adapters); rows routed to no adapter keep ``out``."""
        segments = [s for s in self._segments if s[0] is not None]
        if any(str(a) in self.fusion for a, _, _ in segments):
            return None
        modules = [self.module(a, site) for a, _, _ in segments]  # type: ignore[arg-type]
        lengths = torch.tensor([stop - start for _, start, stop in segments], device=out.device)
        index = torch.repeat_interleave(torch.arange(len(segments), device=out.device), lengths)
        first = segments[0][1]  # rows routed to no adapter sort first (negative ids)
        new = self.config.run_many(modules, index, x[first:], out[first:])
        return None if new is None else (new if first == 0 else torch.cat([out[:first], new]))

    def _hook(self, site: str):
        def apply(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
            segments = self._segments
            if not segments:
                return None
            x = inputs[0]
            if len(segments) == 1:
                adapter = segments[0][0]
                return None if adapter is None else self._run(adapter, site, x, out)
            if len(segments) >= BATCHED_FROM:
                batched = self._batched(site, x, out)
                if batched is not None:
                    return batched
            pieces = [
                out[start:stop] if adapter is None else self._run(adapter, site, x[start:stop], out[start:stop])
                for adapter, start, stop in segments
            ]
            return torch.cat(pieces, dim=0)

        return apply

    def add(self, fuse: bool = False) -> int:
        """Allocate a fresh adapter and return its index; ``fuse`` mixes in every earlier adapter (zero logits)."""
        k = len(self.adapters)
        if fuse and self.config.hook != "output":
            raise ContinualError(
                "learner.transfer=fusion mixes adapter outputs, which prefix tuning does not have: "
                "use transfer=similar or none with adapter=prefix"
            )
        self.adapters.append(self.config.make(self._site_modules, self.hidden_size))
        if fuse and k > 0:
            self.fusion[str(k)] = nn.ParameterDict(
                {site: nn.Parameter(torch.zeros(k + 1)) for site in self._site_modules}
            )
        return k

    def task_modules(self, k: int) -> list[nn.Module]:
        """What adapter ``k``'s outputs depend on: itself, plus its fusion weights and the adapters they mix."""
        if str(k) not in self.fusion:
            return [self.adapters[k]]
        return [self.fusion[str(k)], *self.adapters[: k + 1]]

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
