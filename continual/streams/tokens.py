"""Token-classification data: sentences as words with one BIO tag each, from jsonl/json/parquet or CoNLL files.

Tags are BIO (IOB2): ``O`` is outside any entity, ``B-<type>`` begins an entity and ``I-<type>``
continues one of the same type. An ``I-`` that continues nothing (first tag, after ``O``, or after
another type) is **repaired** to ``B-``: that is how conlleval and seqeval's default mode read it, so
scores match theirs. Repairs are counted in one warning per file naming the first place. Anything else
wrong is one error naming the file and line: a token/tag count mismatch, an empty sentence, a tag
outside BIO, a token that is empty or holds whitespace (a sentence's text is its words joined by
single spaces, and prediction splits text on whitespace).

A token task's labels are the entity types of its train split (sorted); a validation or test split with a
type that train lacks is one error, as a sequence task's test label that train lacks is (its F1 would
count entities no head could tag). ``max_per_class`` caps its sentences, as if all were one class.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from continual.errors import ContinualError
from continual.streams.kinds.tokens import TOKENS, bio_tags
from continual.streams.sources import read_records, read_text
from continual.streams.task import (
    Split,
    Task,
    cap_per_class,
    carve_validation,
    check_task_name,
)

log = logging.getLogger(__name__)

Row = tuple[tuple[str, ...], tuple[str, ...]]  # (words, tags) of one sentence
TAG = re.compile(r"O|[BI]-\S+")
SENTENCE = "sentence"  # the one routing class of a token task


def repair_bio(tags: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """``tags`` with every ``I-`` that continues nothing turned into ``B-``; how many were turned."""
    out: list[str] = []
    repaired, previous = 0, "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag, repaired = "B-" + tag[2:], repaired + 1
        out.append(tag)
        previous = tag
    return tuple(out), repaired


def _strings(value: Any, field: str, location: str, where: str) -> tuple[str, ...]:
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, (list, tuple))
        or not all(isinstance(v, str) for v in value)
    ):
        raise ContinualError(f"{where}: field '{field}' of {location} must be a list of strings, got {value!r:.80}")
    return tuple(value)


def check_sentence(words: tuple[str, ...], tags: tuple[str, ...], location: str, where: str) -> tuple[Row, int]:
    """One sentence, validated (see the module docstring), its tags repaired; how many tags were repaired."""
    if not words:
        raise ContinualError(f"{where}: {location} is an empty sentence (no tokens)")
    if len(words) != len(tags):
        raise ContinualError(
            f"{where}: {location} has {len(words)} tokens and {len(tags)} tags; expected one tag per token"
        )
    for word in words:
        if not word or any(c.isspace() for c in word):
            raise ContinualError(
                f"{where}: {location} has the token {word!r}; tokens must be non-empty, without whitespace"
            )
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise ContinualError(f"{where}: {location} has the tag {tag!r}; expected BIO tags: O, B-<type>, I-<type>")
    tags, repaired = repair_bio(tags)
    return (words, tags), repaired


def _conll_sentences(path: Path, tag_column: int, where: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(location, words, tags) per sentence of a CoNLL file: a token per line, a blank line between sentences."""
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for n, line in enumerate(read_text(path, where).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                yield f"{path} line {start}", words, tags
            words, tags = [], []
            continue
        if len(parts) < 2 or not -len(parts) <= tag_column < len(parts):
            raise ContinualError(
                f"{where}: {path} line {n} has {len(parts)} columns; expected a token and its tag "
                f"in column {tag_column}"
            )
        start = start if words else n
        words.append(parts[0])
        tags.append(parts[tag_column])
    if words:
        yield f"{path} line {start}", words, tags


def read_token_file(
    path: Path, tokens_field: str, tags_field: str | None, where: str, fmt: str | None = None, tag_column: int = -1
) -> list[Row]:
    """Validated sentences from a jsonl/json/parquet file (lists in ``tokens_field``/``tags_field``) or CoNLL."""
    if fmt == "conll":
        if not path.is_file():
            raise ContinualError(f"{where}: file not found: {path}")
        raw = [(loc, tuple(w), tuple(t)) for loc, w, t in _conll_sentences(path, tag_column, where)]
    else:
        if not tags_field:
            raise ContinualError(f"{where}: a task of type tokens needs field 'tags_field' (or format: conll)")
        raw = []
        for location, record in read_records(path, where, fmt):
            for name in (tokens_field, tags_field):
                if name not in record:
                    raise ContinualError(
                        f"{where}: '{name}' is not a field of {location}; fields are: {', '.join(record)}"
                    )
            raw.append(
                (
                    location,
                    _strings(record[tokens_field], tokens_field, location, where),
                    _strings(record[tags_field], tags_field, location, where),
                )
            )
    if not raw:
        raise ContinualError(f"{where}: {path} holds no sentences")
    rows, repaired, first = [], 0, ""
    for location, words, tags in raw:
        row, fixed = check_sentence(words, tags, location, where)
        rows.append(row)
        if fixed and not repaired:
            first = location
        repaired += fixed
    if repaired:
        log.warning("%s: %d I- tags without their B- were read as B- (first: %s)", where, repaired, first)
    return rows


def _types(rows: list[Row]) -> set[str]:
    return {tag[2:] for _, tags in rows for tag in tags if tag != "O"}


def _to_split(rows: list[Row], tag_ids: Mapping[str, int], rng: random.Random, source: str) -> Split:
    rows = list(rows)
    rng.shuffle(rows)
    return Split(
        texts=tuple(" ".join(words) for words, _ in rows),
        labels=np.zeros(len(rows), dtype=np.int64),
        source=source,
        tags=tuple(np.array([tag_ids[t] for t in tags], dtype=np.int64) for _, tags in rows),
    )


def _without_types(rows: list[Row], known: set[str], where: str) -> list[Row]:
    """``rows`` with the entities of types outside ``known`` tagged O (said once): a validation split may hold a
    type that training never shows (fbtod's alarm validation does, once); it only scores the learned ones."""
    out, dropped = [], Counter[str]()
    for words, tags in rows:
        kept = tuple(t if t == "O" or t[2:] in known else "O" for t in tags)
        dropped.update(t[2:] for t, k in zip(tags, kept) if k != t and t.startswith("B-"))
        out.append((words, kept))
    if dropped:
        log.warning(
            "%s: %d entities of types that never occur in train (%s) are tagged O: no tagger could learn them",
            where,
            sum(dropped.values()),
            ", ".join(sorted(dropped)),
        )
    return out


def build_token_task(
    name: str,
    train: list[Row],
    test: list[Row],
    validation: list[Row] | None = None,
    *,
    max_per_class: int | None = None,
    max_eval_per_class: int | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    where: str = "",
    label_space: str = "",
    sources: Mapping[str, str] | None = None,
) -> Task:
    """A validated token :class:`Task` from sentences, with the caps and validation carve-out of sequence tasks."""
    where = where or f"task '{name}'"
    check_task_name(name, where)
    rng = random.Random(f"{seed}:{name}")
    if not _types(train):
        raise ContinualError(f"{where}: the train split has no entities (every tag is O)")
    if not _types(test):
        raise ContinualError(f"{where}: the test split has no entities (every tag is O): its F1 could not be measured")

    def as_pairs(rows: list[Row]) -> list[tuple[Row, str]]:
        return [(row, SENTENCE) for row in rows]

    train_pairs = cap_per_class(as_pairs(train), max_per_class, rng)
    if validation is None:
        if not 0.0 <= validation_fraction < 1.0:
            raise ContinualError(f"{where}: validation_fraction must be in [0, 1), got {validation_fraction}")
        train_pairs, val_pairs = carve_validation(train_pairs, validation_fraction, rng)
    else:
        val_pairs = cap_per_class(as_pairs(validation), max_eval_per_class, rng)
    test_pairs = cap_per_class(as_pairs(test), max_eval_per_class, rng)
    splits = [[row for row, _ in pairs] for pairs in (train_pairs, val_pairs, test_pairs)]
    types = tuple(sorted(_types(splits[0])))
    unknown = sorted(_types(splits[2]) - set(types))
    if unknown:
        raise ContinualError(
            f"{where}: the test split has entity types that never occur in train: {unknown[:10]}; "
            "no tagger could learn them"
        )
    splits[1] = _without_types(splits[1], set(types), f"{where}: validation")
    tag_ids = {tag: k for k, tag in enumerate(bio_tags(types))}
    sources = dict(sources or {})
    sources.setdefault("validation", f"{sources.get('train', '')} (validation carved out)".lstrip())
    train_split, validation_split, test_split = (
        _to_split(rows, tag_ids, rng, sources.get(split, ""))
        for split, rows in zip(("train", "validation", "test"), splits)
    )
    return Task(name, types, train_split, validation_split, test_split, label_space, kind=TOKENS)
