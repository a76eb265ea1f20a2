"""The frozen-prefix cache: hidden states after the layers no adapter touches, computed once per text.

With AdapterDrop (``adapter.skip_layers=k``) the lowest k layers are frozen *and* un-adapted, so their
output for a given text is the same for every adapter, every epoch and every evaluation. The cache
keeps those token states (in the backbone's dtype, real tokens only) keyed by the token ids, up to a memory
budget. Past the budget it logs one warning and stops adding: later texts are computed as if uncached, which
gives the same results, only slower. Evaluation in eval mode makes cached and plain paths equal.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class PrefixCache:
    """Token states after layer ``layer`` per text (keyed by its token ids), within ``budget_mb`` megabytes."""

    def __init__(self, backbone, layer: int, budget_mb: float) -> None:
        self.backbone = backbone
        self.layer = layer
        self.budget = int(budget_mb * 2**20)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False
        self._states: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    @torch.no_grad()
    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, tokens, hidden]`` states after ``layer`` for a right-padded batch (pad positions are zero)."""
        lengths = attention_mask.sum(1).tolist()
        rows = input_ids.cpu().numpy()
        keys = [rows[i, :n].tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self._states]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            rows_missing = torch.as_tensor(missing, device=input_ids.device)
            computed = self.backbone.hidden_after(input_ids[rows_missing], attention_mask[rows_missing], self.layer)
            fresh = {i: computed[j, : lengths[i]].clone() for j, i in enumerate(missing)}  # not views of the batch
            self._store({keys[i]: state for i, state in fresh.items()})
        states = [fresh[i] if i in fresh else self._states[key] for i, key in enumerate(keys)]
        dtype = states[0].dtype if states else torch.float32
        out = torch.zeros(*input_ids.shape, self.backbone.hidden_size, dtype=dtype, device=input_ids.device)
        for i, state in enumerate(states):
            out[i, : lengths[i]] = state
        return out

    def _store(self, entries: dict[bytes, torch.Tensor]) -> None:
        for key, state in entries.items():
            size = state.numel() * state.element_size()
            if self.bytes + size > self.budget:
                if not self.full:
                    self.full = True
                    log.warning(
                        "frozen-prefix cache is full (%d texts, %.0f MB = trainer.cache_mb): texts not cached "
                        "yet are computed in full from now on; raise trainer.cache_mb to keep them",
                        len(self._states),
                        self.bytes / 2**20,
                    )
                return
            self._states[key] = state.clone()  # a view would keep the whole batch tensor alive
            self.bytes += size

    def clear(self) -> None:
        self._states.clear()
        self.bytes = 0
        self.full = False
