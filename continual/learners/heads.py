"""One linear head per task, and the stacked form that labels the rows of many tasks in one product."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from continual.adapters.bank import Segment
from continual.model.outputs import Classified


class TaskHeads(nn.Module):
    """Task ``k``'s head maps its features to its outputs (labels, or BIO tags per token)."""

    def __init__(self, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.heads = nn.ModuleList()
        self.dropout = nn.Dropout(dropout)  # on the features a head reads, while training
        self._stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see stacked()

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, k: int) -> nn.Linear:
        return cast(nn.Linear, self.heads[k])

    def add(self, width: int, device: torch.device) -> nn.Linear:
        """A fresh head of ``width`` outputs (drawn from torch's generator, as seeded by the caller)."""
        self._stacked = None  # the new head is trained (or loaded) next: stack the heads again afterwards
        head = nn.Linear(self.hidden_size, width)
        self.heads.append(head)
        return head.to(device)

    def logits(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """Task ``k``'s logits on ``features`` (dropout as the module's mode says)."""
        return self[k](self.dropout(features))

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every head's weights padded to the widest ``[tasks, outputs, hidden]``, biases (``-inf`` where
        padded) and output counts; built once the heads are frozen and kept until a head is added."""
        if self._stacked is None or self._stacked[0].shape[0] != len(self.heads):
            heads = [self[k] for k in range(len(self.heads))]
            device = heads[0].weight.device
            width = max(head.out_features for head in heads)
            weight = torch.zeros(len(heads), width, self.hidden_size, device=device)
            bias = torch.full((len(heads), width), -torch.inf, device=device)
            for k, head in enumerate(heads):
                weight[k, : head.out_features], bias[k, : head.out_features] = head.weight, head.bias
            sizes = torch.tensor([head.out_features for head in heads], device=device)
            self._stacked = (weight, bias, sizes)
        return self._stacked

    def label_many(self, segments: list[Segment], features: torch.Tensor, out: Classified) -> None:
        """Label the rows of many per-text segments (each routed to a task) at once: each row's head gathered,
        one ``einsum``."""
        weight, bias, sizes = self.stacked()
        device = features.device
        rows = torch.cat([torch.arange(start, stop, device=device) for _, start, stop in segments])
        tasks = torch.cat([torch.full((stop - start,), int(k or 0), device=device) for k, start, stop in segments])
        logits = torch.einsum("bh,bch->bc", features[rows], weight[tasks]) + bias[tasks]
        out.fill(rows, logits, sizes[tasks])
