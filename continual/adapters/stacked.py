"""One site's adapter weights as rows of one tensor per weight, for batches that mix many adapters.

A batch routed over many adapters needs, at every site, each row's own adapter weights. Stacking
the routed adapters' parameters on every call copies them all again (more than half of a site's
time at 118 adapters: ``scripts/bench_scale.py``). Instead every site keeps one tensor per weight
(``[capacity, *shape]``, doubled when full) and each adapter's parameters are views of their row
(``param.data = row``) from the moment the adapter is added: memory holds one copy, training and
loading write into the rows, and a mixed batch gathers its rows with one index per weight.

The stack checks itself before each use: the routed adapters' parameters must still be the views it
made (same data pointers). A move to another device, or weights replaced by ``param.data = ...``,
make it copy the site's weights into a new stack on its next mixed batch. No gradient flows through
it: batches that train stack per call instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Weights = tuple[torch.Tensor, ...]  # one adapter's per-row weights at a site, in its kind's order
MIN_ROWS = 8


def _pointers(weights: Weights) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in weights)


@dataclass
class _Stack:
    tensors: tuple[torch.Tensor, ...]  # weight i of adapter k is tensors[i][k]; rows past len(params) unused
    params: list[Weights]  # adapter k's parameters, views of row k ...
    pointers: list[tuple[int, ...]]  # ... as long as their data pointers are these

    def holds(self, adapters: Sequence[int]) -> bool:
        params, pointers = self.params, self.pointers
        return all(k < len(params) and _pointers(params[k]) == pointers[k] for k in dict.fromkeys(adapters))

    def append(self, weights: Weights) -> bool:
        """The next row holds ``weights`` and they become its views; False if it is full or they do not fit."""
        k = len(self.params)
        fits = all(
            (t.shape[1:], t.dtype, t.device) == (w.shape, w.dtype, w.device) for t, w in zip(self.tensors, weights)
        )
        if not fits or k == self.tensors[0].shape[0]:
            return False
        _bind(self.tensors, k, weights)
        self.params.append(weights)
        self.pointers.append(_pointers(weights))
        return True


def _bind(tensors: Sequence[torch.Tensor], k: int, weights: Weights) -> None:
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: the parameters are trained in place
        for rows, w in zip(tensors, weights):
            rows[k].copy_(w)
            w.data = rows[k]


def _stack(weights: list[Weights], capacity: int) -> _Stack:
    """Copy every adapter's weights into rows and make the parameters views of them, one weight at a time
    (so that at most one weight's old storage and its new rows are held together)."""
    tensors = []
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: the parameters are trained in place
        for i, first in enumerate(weights[0]):
            rows = torch.empty((capacity, *first.shape), dtype=first.dtype, device=first.device)
            torch.stack([w[i] for w in weights], out=rows[: len(weights)])
            for k, w in enumerate(weights):
                w[i].data = rows[k]
            tensors.append(rows)
    return _Stack(tuple(tensors), weights, [_pointers(w) for w in weights])


class SiteStacks:
    """The stacks of a bank's sites: rows bound as adapters are added, made again if parameters moved."""

    def __init__(self) -> None:
        self._stacks: dict[str, _Stack] = {}
        self._lock = threading.Lock()  # threads answering mixed batches at once make a stack once

    def add(self, site: str, weights: Weights, every: Callable[[], list[Weights]]) -> None:
        """A new adapter's ``weights`` at ``site`` (the last of ``every()``, all adapters') become views of a row."""
        with self._lock:
            stack = self._stacks.get(site)
            if stack is None or not stack.append(weights):
                self._make(site, every())

    def rows(
        self, site: str, adapters: Sequence[int], index: torch.Tensor, every: Callable[[], list[Weights]]
    ) -> tuple[torch.Tensor, ...]:
        """Row ``b``'s weights are adapter ``index[b]``'s; ``adapters`` are the routed ones."""
        with self._lock:
            stack = self._stacks.get(site)
            if stack is None or not stack.holds(adapters):
                stack = self._make(site, every())
        return tuple(t[index] for t in stack.tensors)

    def _make(self, site: str, weights: list[Weights]) -> _Stack:
        self._stacks.pop(site, None)  # release the old rows as the parameters leave them
        capacity = max(MIN_ROWS, 1 << (len(weights) - 1).bit_length())  # the next power of two: room to grow
        stack = self._stacks[site] = _stack(weights, capacity)
        return stack
