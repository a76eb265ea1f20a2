"""Token tasks (slots, named entities): a BIO tag per word from every token's state, scored by entity micro F1.

Words are the runs of non-whitespace of a text; each word is tagged at its first sub-token (later
sub-tokens are not trained and not read), and a sentence's tags are the best valid BIO sequence under its
words' tag scores (:func:`word_tags`). The data side (reading BIO files, repairs) is
:mod:`continual.streams.tokens`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from continual.entities import EntityCounts, bio_decode, entities
from continual.errors import ContinualError
from continual.model.backbone import TOKEN_STATES
from continual.model.outputs import Classified
from continual.model.training import pad_targets, token_targets

if TYPE_CHECKING:
    from continual.streams.kinds import Encoded, OutputsOf, Score, Tokenizer
    from continual.streams.task import Split, Task

log = logging.getLogger(__name__)


def bio_tags(types: Sequence[str]) -> tuple[str, ...]:
    """``O``, ``B-t1``, ``I-t1``, ``B-t2``, ...: tag id 0 is outside, 2m+1 begins and 2m+2 continues type m."""
    return ("O", *(f"{prefix}-{t}" for t in types for prefix in ("B", "I")))


class TokenKind:
    """A BIO tag per word (``type: tokens``): the task's labels are its entity types."""

    name: str = "tokens"
    metric: str = "f1"
    label_noun: str = "entity types"
    per_text: bool = False
    pooling: str | None = TOKEN_STATES

    def check_spec(self, raw: Mapping[str, Any], where: str) -> None:
        if raw.get("labels") is not None:
            raise ContinualError(
                f"{where}: field 'labels' selects labels of a sequence task; a token task's labels are its entity types"
            )
        if raw.get("dataset"):
            raise ContinualError(
                f"{where}: a task of type tokens reads local files (jsonl, json, parquet, conll), not a Hub dataset"
            )
        if raw.get("format") != "conll" and not raw.get("tags_field"):
            raise ContinualError(
                f"{where}: a task of type tokens needs field 'tags_field' (each sentence's list of BIO tags) "
                "or format: conll"
            )

    def load(self, spec: Any, base: Path, where: str, **build: Any) -> Task:
        from continual.streams.tokens import build_token_task, read_token_file

        def read(split: str) -> Any:
            path, field = spec.path(split, base), f"{where} field '{split}'"
            return read_token_file(path, spec.tokens_field, spec.tags_field, field, spec.format, spec.tag_column)

        validation = read("validation") if spec.validation else None
        return build_token_task(spec.name, read("train"), read("test"), validation, where=where, **build)

    def outputs(self, labels: Sequence[str]) -> int:
        return len(bio_tags(labels))

    def routing_classes(self, labels: Sequence[str]) -> int:
        return 1  # a router sends a whole sentence to the task

    def encode(self, tokenizer: Tokenizer, texts: Sequence[str], max_length: int, what: str) -> Encoded:
        """Word-aligned token ids. Sentences longer than ``max_length`` tokens keep their first words; the rest
        are neither trained nor tagged (their gold entities count as missed), counted in one warning."""
        from continual.streams.kinds import Encoded

        tokens, starts = tokenizer.tokenize_words(list(texts), max_length)
        cut = sum(int(np.any(first < 0)) for first in starts)
        if cut:
            log.warning(
                "%s: %d of %d sentences are longer than trainer.max_length=%d tokens; their last words are not tagged",
                what,
                cut,
                len(texts),
                min(max_length, tokenizer.max_tokens),
            )
        return Encoded(tokens, starts)

    def targets(self, split: Split, encoded: Encoded) -> list[Any]:
        """Each word's tag at its first sub-token, ignored positions everywhere else."""
        assert encoded.starts is not None
        return [
            token_targets(len(ids), first, tags) for ids, first, tags in zip(encoded.tokens, encoded.starts, split.tags)
        ]

    def target_tensor(self, targets: Sequence[Any], device: torch.device) -> torch.Tensor:
        return pad_targets(list(targets), device)

    def loss(self, logits: torch.Tensor, targets: Sequence[Any]) -> torch.Tensor:
        target = self.target_tensor(targets, logits.device)
        return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    def fill(self, out: Classified, rows: slice, logits: torch.Tensor, mask: torch.Tensor) -> None:
        out.fill_tags(rows, logits, mask)

    def answer(self, text: str, starts: np.ndarray | None, row: Classified, labels: Sequence[str]) -> dict[str, Any]:
        assert starts is not None
        return {"entities": spans(text, *word_tags(row.tag_scores.cpu().numpy(), starts), labels)}

    def score(
        self,
        task: Task,
        split: Split,
        own: int,
        routes: np.ndarray,
        outputs: OutputsOf,
        classes: Mapping[int, np.ndarray],
    ) -> Score:
        """Entity micro F1 of the taggers the texts were routed to (texts routed nowhere: entities missed), and
        per-type precision, recall, F1 and support."""
        from continual.streams.kinds import Score

        counts = EntityCounts()
        for k in np.unique(routes[routes >= 0]).tolist():
            mine = routes == k
            predicted = outputs(k, mine).tags
            for i in np.flatnonzero(mine):
                assert predicted[i] is not None  # filled for every needed row
                counts.add_tags(split.tags[i], classes[own], predicted[i], classes[k])
        for i in np.flatnonzero(routes < 0):
            counts.add_tags(split.tags[i], classes[own], None, classes[own])
        return Score(counts.micro_f1, counts.by_class(dict(zip(classes[own].tolist(), task.labels))))


def word_tags(scores: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each word's tag, decoded from a sentence's ``[tokens, tags]`` tag scores at the words' first sub-tokens
    as the best valid BIO sequence (:func:`~continual.entities.bio_decode`; words cut off by truncation are O),
    and that tag's probability (0 for words cut off)."""
    kept = starts >= 0
    at_words = scores[np.maximum(starts, 0)]
    at_words[~kept] = -np.inf
    at_words[~kept, 0] = 0.0
    tags = bio_decode(at_words)
    return tags, np.where(kept, np.exp(at_words[np.arange(len(tags)), tags]), 0.0)


def spans(text: str, tags: np.ndarray, confidence: np.ndarray, types: Sequence[str]) -> list[dict[str, Any]]:
    """A tagger's entities in ``text`` from its words' ``tags`` and their ``confidence`` (its words are the runs
    of non-whitespace): text, type, character offsets ``start``/``end`` (``text[start:end]``) and confidence,
    the mean tag probability over its words."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    found = []
    for first, stop, kind in entities(tags):
        begin, end = words[first][0], words[stop - 1][1]
        found.append(
            {
                "text": text[begin:end],
                "type": types[int(kind)],
                "start": begin,
                "end": end,
                "confidence": round(float(confidence[first:stop].mean()), 6),
            }
        )
    return found


TOKENS = TokenKind()
