"""Read ``(text, label)`` pairs from local files (csv, tsv, json, jsonl, parquet) or Hugging Face Hub datasets.

Local text files are read here, not through ``datasets``, so that every value stays the string the
file holds (a CSV label ``01`` stays ``01``, ``NA`` stays ``NA``) and every problem names its file and
line: a row with the wrong number of fields, bytes that are not UTF-8, a line that is not JSON. A
byte-order mark is ignored. Parquet files keep their column types; numbers become their text.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from continual.errors import ContinualError, first_line
from continual.streams.task import Pairs

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
Record = tuple[str, dict[str, Any]]  # (where it is: "FILE line N", the row's fields)


def read_text(path: Path, where: str) -> str:
    """The file's text as UTF-8 (a byte-order mark dropped); bytes that are not UTF-8 name their line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ContinualError(
            f"{where}: {path} line {line} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def _csv_records(path: Path, text: str, delimiter: str, where: str) -> Iterator[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise ContinualError(f"{where}: {path} is empty (no header row)")
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ContinualError(
                f"{where}: {path} line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
            )
        yield f"{path} line {reader.line_num}", dict(zip(header, row))


def _json_lines(path: Path, text: str, where: str) -> Iterator[Record]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ContinualError(f"{where}: {path} line {n} is not JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise ContinualError(f"{where}: {path} line {n} is {type(row).__name__}, expected a JSON object")
        yield f"{path} line {n}", row


def _json_records(path: Path, text: str, where: str) -> Iterator[Record]:
    """A JSON array of objects, or JSON lines (one object per line) in a ``.json`` or ``.jsonl`` file."""
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContinualError(f"{where}: {path} line {exc.lineno} is not JSON ({exc.msg})") from exc
        for n, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ContinualError(f"{where}: {path} item {n} is {type(row).__name__}, expected a JSON object")
            yield f"{path} item {n}", row
        return
    yield from _json_lines(path, text, where)


def _parquet_records(path: Path, where: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # ArrowInvalid, OSError: not a parquet file
        raise ContinualError(f"{where}: cannot read {path} as parquet: {first_line(exc)}") from exc
    for n, row in enumerate(rows):
        yield f"{path} row {n}", row


def read_records(path: Path, where: str, fmt: str | None = None) -> list[Record]:
    """Every row of a csv/tsv/json/jsonl/parquet file (``fmt`` overrides the suffix), with its location."""
    if not path.is_file():
        raise ContinualError(f"{where}: file not found: {path}")
    kind = fmt or FORMATS.get(path.suffix.lower())
    if kind not in set(FORMATS.values()):
        raise ContinualError(
            f"{where}: cannot tell the format of {path}; use a suffix in {sorted(FORMATS)} or set field 'format' "
            "to csv, tsv, json or parquet"
        )
    if kind == "parquet":
        records = list(_parquet_records(path, where))
    else:
        text = read_text(path, where)
        delimiter = "\t" if kind == "tsv" else ","
        records = list(
            _csv_records(path, text, delimiter, where) if kind in ("csv", "tsv") else _json_records(path, text, where)
        )
    if not records:
        raise ContinualError(f"{where}: {path} holds no rows")
    return records


def _field(location: str, row: dict[str, Any], name: str, kind: str, where: str) -> Any:
    if name not in row:
        raise ContinualError(f"{where}: {kind} '{name}' is not a field of {location}; fields are: {', '.join(row)}")
    return row[name]


def records_to_pairs(records: list[Record], text_field: str, label_field: str, where: str) -> Pairs:
    """``(text, label)`` pairs; null or blank texts are dropped and counted, anything else wrong is one line."""
    pairs: Pairs = []
    dropped = 0
    for location, row in records:
        text = _field(location, row, text_field, "text_field", where)
        label = _field(location, row, label_field, "label_field", where)
        if isinstance(text, list) and all(isinstance(word, str) for word in text):
            text = " ".join(text)  # a tokenized sentence (e.g. the tokens of a slot-tagged utterance)
        if text is None or (isinstance(text, str) and not text.strip()):
            dropped += 1
            continue
        if not isinstance(text, str):
            raise ContinualError(
                f"{where}: text_field '{text_field}' of {location} is {type(text).__name__} {text!r}, "
                "expected a string (or a list of tokens)"
            )
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ContinualError(f"{where}: label_field '{label_field}' of {location} is empty")
        pairs.append((text, str(label)))
    if dropped:
        log.warning("%s: dropped %d empty or null texts from %s", where, dropped, records[0][0].rsplit(" ", 2)[0])
    return pairs


def read_file(path: Path, text_field: str, label_field: str, where: str, fmt: str | None = None) -> Pairs:
    """Pairs from a csv/tsv/json/jsonl/parquet file (``fmt`` overrides the suffix)."""
    return records_to_pairs(read_records(path, where, fmt), text_field, label_field, where)


def read_hub(dataset: str, config: str | None, split: str, text_field: str, label_field: str, where: str) -> Pairs:
    """Pairs from a Hugging Face Hub dataset split (needs the network, or a warm ``datasets`` cache)."""
    import datasets

    from continual import hub

    source = f"Hub dataset {dataset}" + (f" ({config})" if config else "") + f" split '{split}'"
    hub.reachable()
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:
        raise ContinualError(f"{where}: cannot load {source}{hub.unreachable_note()}: {first_line(exc)}") from exc
    columns = {}
    for field, kind in ((text_field, "text_field"), (label_field, "label_field")):
        if field not in ds.column_names:
            raise ContinualError(
                f"{where}: {kind} '{field}' is not a column of {source}; columns are: {', '.join(ds.column_names)}"
            )
        feature = ds.features[field]
        values = list(ds[field])
        columns[field] = [feature.int2str(v) for v in values] if hasattr(feature, "int2str") else values
    records = [
        (f"{source} row {n}", {text_field: t, label_field: lab})
        for n, (t, lab) in enumerate(zip(columns[text_field], columns[label_field]))
    ]
    return records_to_pairs(records, text_field, label_field, where)
