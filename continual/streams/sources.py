"""Read ``(text, label)`` pairs from local files or Hugging Face Hub datasets, through ``datasets``."""

from __future__ import annotations

import logging
from pathlib import Path

from continual.errors import ContinualError
from continual.streams.task import Pairs

log = logging.getLogger(__name__)

# file suffix -> datasets builder name
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _column_values(ds, field: str, kind: str, where: str, source: str) -> list:
    if field not in ds.column_names:
        raise ContinualError(
            f"{where}: {kind} '{field}' is not a column of {source}; columns are: {', '.join(ds.column_names)}"
        )
    values = ds[field]
    feature = ds.features[field]
    if hasattr(feature, "int2str"):  # ClassLabel: integers stand for names
        values = [feature.int2str(v) for v in values]
    return list(values)


def _pairs(ds, text_field: str, label_field: str, where: str, source: str) -> Pairs:
    """Extract pairs; drop (and count) null/blank texts, reject non-string texts and null labels."""
    texts = _column_values(ds, text_field, "text_field", where, source)
    labels = _column_values(ds, label_field, "label_field", where, source)
    pairs: Pairs = []
    dropped = 0
    for row, (text, label) in enumerate(zip(texts, labels)):
        if text is None or (isinstance(text, str) and not text.strip()):
            dropped += 1
            continue
        if not isinstance(text, str):
            raise ContinualError(
                f"{where}: text_field '{text_field}' of {source} row {row} is {type(text).__name__} {text!r}, "
                "expected a string"
            )
        if label is None:
            raise ContinualError(f"{where}: label_field '{label_field}' of {source} row {row} is empty")
        pairs.append((text, str(label)))
    if dropped:
        log.warning("%s: dropped %d empty or null texts from %s", where, dropped, source)
    return pairs


def read_file(path: Path, text_field: str, label_field: str, where: str, fmt: str | None = None) -> Pairs:
    """Pairs from a csv/tsv/json/jsonl/parquet file (``fmt`` overrides the suffix)."""
    import datasets

    if not path.is_file():
        raise ContinualError(f"{where}: file not found: {path}")
    builder = fmt or FORMATS.get(path.suffix.lower())
    if builder not in set(FORMATS.values()):
        raise ContinualError(
            f"{where}: cannot tell the format of {path}; use a suffix in {sorted(FORMATS)} or set field 'format' "
            "to csv, json or parquet"
        )
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" and builder == "csv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ContinualError(f"{where}: cannot read {path} as {builder}: {first}") from exc
    if len(ds) == 0:
        raise ContinualError(f"{where}: {path} holds no rows")
    return _pairs(ds, text_field, label_field, where, str(path))


def read_hub(dataset: str, config: str | None, split: str, text_field: str, label_field: str, where: str) -> Pairs:
    """Pairs from a Hugging Face Hub dataset split (needs the network, or a warm ``datasets`` cache)."""
    import datasets

    source = f"Hub dataset {dataset}" + (f" ({config})" if config else "") + f" split '{split}'"
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ContinualError(f"{where}: cannot load {source}: {first}") from exc
    return _pairs(ds, text_field, label_field, where, source)
