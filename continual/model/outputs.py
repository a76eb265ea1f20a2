"""What heads output for a batch: a label (and confidence) per text, or a tag per token, in one shape."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Classified(NamedTuple):
    """Per-example outputs of the routed heads; ``labels`` is -1 where an example went to no task.

    A token task's head scores every tag at every token: ``tag_scores`` is ``[batch, tokens, tags]`` log-
    probabilities (``-inf`` beyond a task's own tags, and on rows of sequence tasks), which the kind decodes
    into one valid tag sequence per sentence once it knows where the words start. Its row's ``labels`` is 0
    while ``confidence`` and ``certainty`` are the means over the row's real tokens.
    """

    labels: torch.Tensor
    confidence: torch.Tensor  # softmax probability of the predicted label
    certainty: torch.Tensor  # 1 - entropy / log(number of labels): 1 = one-hot, 0 = uniform
    tag_scores: torch.Tensor  # [batch, tokens, tags]: a token task's log-probability of each tag per token

    @classmethod
    def empty(cls, n: int, device: torch.device, width: int = 0, tags: int = 0) -> Classified:
        """Outputs for ``n`` examples of ``width`` tokens that no head has seen yet (label -1), with room for
        ``tags`` tags per token (the most of any token task in the batch)."""
        zeros = torch.zeros(n, device=device)
        return cls(
            torch.full((n,), -1, dtype=torch.long, device=device),
            zeros,
            zeros.clone(),
            torch.full((n, width, tags), -torch.inf, device=device),
        )

    def fill(self, rows: torch.Tensor | slice, logits: torch.Tensor, sizes: torch.Tensor | None = None) -> None:
        """Write the heads' prediction, confidence and certainty for ``rows`` from their ``logits`` (rows of
        heads of several widths: padded with ``-inf``, each row's label count in ``sizes``)."""
        probs = logits.softmax(-1)
        self.confidence[rows], self.labels[rows] = probs.max(-1)
        self.certainty[rows] = _certainty(probs, sizes)

    def fill_tags(self, rows: slice, logits: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Write a tagger's ``[n, tokens, tags]`` logits for ``rows``: tag scores, and the means per row of the
        best tag's probability and of the certainty over the real tokens."""
        scores = logits.float().log_softmax(-1)
        self.tag_scores[rows, :, : scores.shape[-1]] = scores
        probs = scores.exp()
        real = attention_mask.bool()
        count = real.sum(1).clamp(min=1)
        self.labels[rows] = 0
        self.confidence[rows] = torch.where(real, probs.max(-1).values, 0.0).sum(1) / count
        self.certainty[rows] = torch.where(real, _certainty(probs), 0.0).sum(1) / count


def _certainty(probs: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """1 - entropy / log(number of outcomes), over the last axis (``sizes``: each row's own number)."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / (math.log(probs.shape[-1]) if sizes is None else sizes.float().log())
