"""A bank of per-task adapters attached to a frozen backbone, routable per example.

Routing is data, not model surgery: before a forward pass the caller sets *segments*, contiguous
slices of the batch that each belong to one adapter (``[(adapter, start, stop), ...]``), for its own
thread only: threads that share one bank (a served model's request workers) never see each other's
routing. Every adapted module then runs each adapter once on its own slice. A batch that mixes many tasks therefore
costs one backbone pass plus one small computation per adapter and site, not one pass per adapter.
From :data:`BATCHED_FROM` segments on, kinds that can (bottleneck, LoRA, BitFit) run all of a site's
adapters as one batched computation instead: each example's adapter weights are gathered and applied
with ``bmm``, so a batch of 128 adapters costs a few kernels per site rather than 128 small ones.
Outside training the weights are gathered from the site's stack (:mod:`continual.adapters.stacked`:
the adapters' parameters are views of its rows), so no call copies every routed adapter again.
Without segments (or with adapter ``None``) the backbone runs plain, which routers use for features.

Any adapter kind fits: its config implements :class:`AdapterKind`. Output adapters (bottleneck,
LoRA, BitFit) map ``(site input, site output) -> new output`` through a forward hook; prefix tuning
replaces the attention computation of its sites while attached.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from continual.adapters.fusion import Fusion
from continual.adapters.prefix import PrefixAttention
from continual.adapters.sites import layer_of
from continual.adapters.stacked import SiteStacks
from continual.errors import ContinualError

if TYPE_CHECKING:
    from continual.model.backbone import Backbone

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
    * :meth:`row_weights` and :meth:`run_rows`: an output kind's batched form, equal to running each
      row through its own task's module. ``row_weights`` names the parameters that differ per task
      (the bank stacks and gathers them per row); ``run_rows`` applies them. A kind without a batched
      form returns ``()`` from ``row_weights`` (the bank then loops over the segments).
    """

    @property
    def hook(self) -> str: ...

    @property
    def skip_layers(self) -> int: ...

    def sites(self, backbone: Backbone) -> dict[str, nn.Module]: ...

    def make(self, sites: dict[str, nn.Module], hidden_size: int) -> nn.ModuleDict: ...

    def row_weights(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        """One task's module's per-task parameters at a site, in the order :meth:`run_rows` takes them."""
        ...

    def run_rows(
        self, module: nn.Module, weights: tuple[torch.Tensor, ...], x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """``(x, out) -> new out`` where row ``b`` uses ``weights[i][b]`` (its task's ``row_weights()[i]``);
        ``module`` is any task's module at the site, for what all share (activation, dropout, scale)."""
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
        # AdapterFusion: fusion[str(k)] composes task k's output from its sources' (adapters/fusion.py)
        self.fusion = nn.ModuleDict()
        self._routing = threading.local()  # each thread's segments (see routed)
        # per-site stacks of the adapters' weights for mixed batches; None: stack per call (a learner whose
        # adapters leave memory turns them off, or a dropped adapter's row would keep it resident)
        self.stacks: SiteStacks | None = SiteStacks()
        sites = config.sites(backbone)
        self._site_modules = sites
        self._first_site = next(iter(sites))
        self.first_layer = min(layer_of(name) for name in sites)  # layers below it never see an adapter
        self._handles: list[Any] = (  # what remove_hooks undoes: prefix attentions or forward hooks
            [PrefixAttention(module, name, self._routed_sites) for name, module in sites.items()]
            if config.hook == "attention"
            else [module.register_forward_hook(self._hook(name)) for name, module in sites.items()]
        )

    def module(self, k: int, site: str) -> Any:
        """Task ``k``'s module at ``site`` (as its kind's ``make`` built it)."""
        return self.adapters[k][site]  # type: ignore[index]  # adapters[k] is the ModuleDict make() returned

    @property
    def _segments(self) -> Sequence[Segment]:
        """This thread's segments (none: the plain backbone)."""
        return getattr(self._routing, "segments", ())

    def _routed_sites(self, site: str) -> list[tuple[Any, int, int]]:
        return [(None if a is None else self.module(a, site), start, stop) for a, start, stop in self._segments]

    def _run(self, k: int, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``k`` at ``site``; a fused adapter composes its sources' outputs (:class:`Fusion`)."""
        if str(k) not in self.fusion:
            return self.module(k, site)(x, out)
        fusion = cast(Fusion, self.fusion[str(k)])
        return fusion(site, out, [self.module(j, site)(x, out) for j in fusion.source_list])

    def _batched(self, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """Every routed row through its adapter in one batched computation (None: the kind cannot, or a
        segment is fused, which mixes adapters); rows routed to no adapter keep ``out``."""
        segments = [s for s in self._segments if s[0] is not None]
        adapters: list[int] = [a for a, _, _ in segments]  # type: ignore[misc]  # None filtered out above
        if any(str(a) in self.fusion for a in adapters) or not self._weights(adapters[0], site):
            return None
        lengths = torch.tensor([stop - start for _, start, stop in segments], device=out.device)
        weights = self._row_weights(site, adapters, lengths)
        first = segments[0][1]  # rows routed to no adapter sort first (negative ids)
        new = self.config.run_rows(self.module(adapters[0], site), weights, x[first:], out[first:])
        return new if first == 0 else torch.cat([out[:first], new])

    def _row_weights(self, site: str, adapters: list[int], lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each routed row's adapter weights at ``site`` (segment ``i`` has ``lengths[i]`` rows of adapter
        ``adapters[i]``): from the site's stack, or, where gradients must reach the parameters (training)
        or stacks are off, stacked from the routed adapters' parameters on this call."""
        if self.stacks is not None and not torch.is_grad_enabled():
            index = torch.repeat_interleave(torch.tensor(adapters, device=lengths.device), lengths)
            return self.stacks.rows(site, adapters, index, partial(self._all_weights, site))
        index = torch.repeat_interleave(torch.arange(len(adapters), device=lengths.device), lengths)
        return tuple(torch.stack(w)[index] for w in zip(*(self._weights(a, site) for a in adapters)))

    def _weights(self, k: int, site: str) -> tuple[torch.Tensor, ...]:
        return self.config.row_weights(self.module(k, site))

    def _all_weights(self, site: str) -> list[tuple[torch.Tensor, ...]]:
        return [self._weights(k, site) for k in range(len(self.adapters))]

    def _device(self) -> torch.device:
        """Where the backbone is (its site modules): new adapters are made there."""
        return next(self._site_modules[self._first_site].parameters()).device

    def _hook(self, site: str):
        def apply(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
            new = self._adapted(site, inputs[0], out)
            # in the site's dtype: a backbone held in bf16 reads bf16 on (an fp32 bias would promote the sum)
            return None if new is None else new.to(out.dtype)

        return apply

    def _adapted(self, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """The site's new output for this thread's segments (None: no segments, or all rows plain)."""
        segments = self._segments
        if not segments:
            return None
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

    def add(self) -> int:
        """Allocate a fresh adapter and return its index."""
        k = len(self.adapters)
        adapter = self.config.make(self._site_modules, self.hidden_size)  # on the CPU
        device = self._device()
        self.adapters.append(adapter if device.type == "cpu" else adapter.to(device))  # there before rows are bound
        if self.stacks is not None and self._weights(k, self._first_site):  # rows from the start: see stacked.py
            for site in self._site_modules:
                self.stacks.add(site, self._weights(k, site), partial(self._all_weights, site))
        return k

    def fuse(self, k: int, kind: str, sources: Sequence[int]) -> Fusion:
        """Make adapter ``k`` compose the outputs of adapters ``sources`` (earlier ones) and its own, as ``kind``
        says (fresh fusion weights, trained with adapter ``k``)."""
        if self.config.hook != "output":
            raise ContinualError(
                "learner.transfer=fusion mixes adapter outputs, which prefix tuning does not have: "
                "use transfer=similar or none with adapter=prefix"
            )
        fusion = Fusion(kind, list(self._site_modules), self.hidden_size, [*sources, k]).to(self._device())
        self.fusion[str(k)] = fusion
        return fusion

    def fused(self, k: int) -> bool:
        """Whether adapter ``k`` composes other adapters' outputs (:meth:`fuse`)."""
        return str(k) in self.fusion

    def own_modules(self, k: int) -> list[nn.Module]:
        """What belongs to adapter ``k`` alone (and trains with it): itself, and its fusion weights if fused."""
        return [self.adapters[k], *([self.fusion[str(k)]] if self.fused(k) else [])]

    def runs_through(self, k: int) -> list[int]:
        """The adapters a batch routed to ``k`` runs: ``k``, and its sources if ``k`` is fused."""
        return cast(Fusion, self.fusion[str(k)]).source_list if self.fused(k) else [k]

    def task_modules(self, k: int) -> list[nn.Module]:
        """What adapter ``k``'s outputs depend on: itself, plus its fusion weights and the adapters they mix."""
        if not self.fused(k):
            return [self.adapters[k]]
        return [self.fusion[str(k)], *(self.adapters[j] for j in self.runs_through(k))]

    @contextmanager
    def routed(self, segments: Sequence[Segment]) -> Iterator[None]:
        """Apply ``segments`` to every forward pass this thread makes inside the block."""
        previous, self._routing.segments = self._segments, tuple(segments)
        try:
            yield
        finally:
            self._routing.segments = previous

    def _apply(self, fn, recurse=True):  # nn.Module's, behind .to(), .half(), ...
        """A move or cast gives the parameters new storage: drop the stacks rather than keep stale rows (they
        are made again at the next add or mixed batch)."""
        moved = super()._apply(fn, recurse)
        if self.stacks is not None:
            self.stacks = SiteStacks()
        return moved

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
