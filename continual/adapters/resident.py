"""Adapters in memory under a byte budget; the others stay in their files and are read on demand (LRU).

A bank loaded from a run (``continual predict``, serving, a resumed run) may hold thousands of
adapters. With a budget, an adapter's weights are dropped from memory (its parameters become empty
tensors) once the resident ones exceed it, least recently used first, and read back from its
safetensors file (memory-mapped by ``safe_open``) when a batch is routed to it, after checking that the
file still holds what was loaded (its sha256, taken when the adapter was tracked). Heads and fusion
weights are small and stay resident. A batch that needs more adapters than the budget holds keeps
them all until it is done, then drops the least recently used: the budget bounds memory between
batches, not within one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from continual import files
from continual.errors import ContinualError


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class ResidentSet:
    """Which of a bank's adapters are in memory (``budget_mb``), and their files (``prefix`` + parameter name)."""

    def __init__(self, adapters: nn.ModuleList, budget_mb: float, prefix: str = "adapter.") -> None:
        self.adapters, self.budget, self.prefix = adapters, int(budget_mb * 2**20), prefix
        self.files: dict[int, Path] = {}
        self.digests: dict[int, str] = {}  # each file's sha256 when its adapter was loaded
        self.shapes: dict[int, dict[str, tuple[torch.Size, torch.dtype, torch.device]]] = {}
        self.lru: OrderedDict[int, int] = OrderedDict()  # resident adapter -> its bytes, least recent first
        self.loads = 0  # adapters read back from their files (for benchmarks and tests)
        # held by a batch from ensure() to release(): another thread's batch must not drop what this one runs
        self.in_use = threading.RLock()

    @property
    def resident_bytes(self) -> int:
        return sum(self.lru.values())

    def is_resident(self, k: int) -> bool:
        return k not in self.files or k in self.lru

    def numel(self, k: int) -> int:
        """Adapter ``k``'s parameter count, in memory or not."""
        if self.is_resident(k):
            return sum(p.numel() for p in self.adapters[k].parameters())
        return sum(shape.numel() for shape, _, _ in self.shapes[k].values())

    def track(self, k: int, path: Path) -> None:
        """Adapter ``k`` (resident now, its weights as in ``path``) may be dropped from memory from now on."""
        self.files[k], self.digests[k] = path, files.sha256(path)
        self.lru[k] = _bytes(self.adapters[k])
        self._evict(keep=())

    def ensure(self, needed: Iterable[int]) -> None:
        """Adapters ``needed`` in memory (read back if dropped, most recently used now); then the budget again."""
        needed = [k for k in dict.fromkeys(needed) if k in self.files]
        for k in needed:
            if k in self.lru:
                self.lru.move_to_end(k)
            else:
                self._read(k)
        self._evict(keep=set(needed))

    def release(self) -> None:
        """Back under the budget once a batch is done (it may have needed more adapters than the budget holds)."""
        self._evict(keep=())

    def _read(self, k: int) -> None:
        from safetensors import safe_open

        if files.sha256(self.files[k]) != self.digests[k]:
            raise ContinualError(f"{self.files[k]}: damaged: it changed since the adapter was loaded from it")
        with safe_open(str(self.files[k]), framework="pt") as f:
            for name, p in self.adapters[k].named_parameters():
                _, dtype, device = self.shapes[k][name]
                p.data = f.get_tensor(self.prefix + name).to(device=device, dtype=dtype)
        self.lru[k] = _bytes(self.adapters[k])
        self.loads += 1

    def _evict(self, keep: Iterable[int]) -> None:
        keep = set(keep)
        for k in [k for k in self.lru if k not in keep]:
            if self.resident_bytes <= self.budget:
                return
            self.shapes[k] = {name: (p.shape, p.dtype, p.device) for name, p in self.adapters[k].named_parameters()}
            for p in self.adapters[k].parameters():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            del self.lru[k]
