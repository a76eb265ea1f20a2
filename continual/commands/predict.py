"""``continual predict``: route and label texts with a finished run or a registered model version.

One call may mix texts of many tasks (see :mod:`continual.serving.predictor`); a text may name its task
(``task`` field or ``--task``), which bypasses the router, as an oracle run needs.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from continual import files
from continual.commands.cmdline import check_output_file, subcommand_parser
from continual.errors import ContinualError
from continual.logs import quiet_libraries
from continual.serving.predictor import Query, SavedBank
from continual.serving.registry import fetch_bank
from continual.streams.kinds import KINDS
from continual.streams.sources import FORMATS, read_records, read_text
from continual.tracking.store import DEFAULT_URI


def read_queries(path: Path, text_field: str = "text") -> list[Query]:
    """Texts from ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` (rows with ``text_field`` and an optional
    ``task``) or ``.txt`` (one text per line), read as training reads stream files (UTF-8, a BOM ignored)."""
    where = "--input"
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise ContinualError(f"{where}: file not found: {path}")
        lines = read_text(path, where).splitlines()
        records = [(f"{path} line {n}", {text_field: line}) for n, line in enumerate(lines, 1) if line.strip()]
    elif path.suffix.lower() in FORMATS:
        records = read_records(path, where)
    else:
        raise ContinualError(f"{where}: {path} must be .jsonl, .json, .csv, .tsv, .parquet or .txt")
    if not records:
        raise ContinualError(f"{where}: {path} holds no texts")
    return [_query(location, row, text_field) for location, row in records]


def _query(location: str, row: dict, text_field: str) -> Query:
    if text_field not in row:
        raise ContinualError(
            f"--input: {location} has no field '{text_field}' (fields: {', '.join(row)}); choose one with --text-field"
        )
    text = row[text_field]
    if not isinstance(text, str) or not text.strip():
        raise ContinualError(f"--input: {location}: field '{text_field}' must be a non-empty string, got {text!r}")
    task = row.get("task") or None
    return Query(text, None if task is None else str(task))


USAGE = """usage: continual predict RUN [--text TEXT ...] [--input FILE] [--output FILE] [--task NAME]
                         [--type sequence|tokens] [--all-tasks] [--accept-rate RATE] [--text-field text]
                         [--tracking-uri URI] [--no-progress] [key=value ...]

RUN is a finished run's output folder, an MLflow run id / runs:/<id>, or a registered model version
models:/NAME/VERSION or models:/NAME@alias, read from --tracking-uri (default: the embedded store
runs/mlflow.db). Texts come from --text (repeatable) or --input (.jsonl with a 'text' field and
optional 'task', .csv/.tsv with a text column, .txt one per line). One JSON line per text goes to
--output (default stdout): text, task (null = rejected), label, confidence, router scores per task,
abstained; a token task (slots) gives entities instead of a label: text, type, start and end character
offsets, confidence. --type routes among tasks of that type only (a bank with intent and slot tasks of
the same texts). --all-tasks runs every task on each text (the multi-task hub): one line per text with
each task's output under "tasks" and the router's choice per task type under "routes". A run or a
registered model rejects text that looks less in-scope than --accept-rate (default: its router's
accept_rate, else 0.99) of its tasks' validation texts, as a served version does. key=value overrides
the saved config, e.g. trainer.device=cuda trainer.eval_batch_size=256."""


def _arguments(argv: list[str]) -> Any:
    parser = subcommand_parser("predict", USAGE)
    parser.add_argument("run")
    parser.add_argument("--text", action="append", default=[])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--task")
    parser.add_argument("--type", choices=list(KINDS))
    parser.add_argument("--all-tasks", action="store_true")
    parser.add_argument("--accept-rate", type=float)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    parser.add_argument("--no-progress", action="store_true")
    args, rest = parser.parse_known_args(argv)  # key=value overrides may sit anywhere
    bad = [o for o in rest if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; config overrides look like key=value")
    args.overrides = rest
    if not args.text and args.input is None:
        parser.error("give texts with --text or --input")
    if args.all_tasks and (args.task or args.type or args.accept_rate is not None):
        parser.error("--all-tasks runs every task: it takes no --task, --type or --accept-rate")
    return args


def _queries(args: Any) -> list[Query]:
    blank = [n for n, text in enumerate(args.text, 1) if not text.strip()]
    if blank:
        raise ContinualError(f"--text: text {blank[0]} is empty; give a non-empty text")
    queries = [Query(t, args.task) for t in args.text]
    if args.input is not None:
        queries += [
            q if q.task or not args.task else Query(q.text, args.task)
            for q in read_queries(args.input, args.text_field)
        ]
    if args.all_tasks and any(q.task for q in queries):
        raise ContinualError("--all-tasks runs every task on each text; drop the 'task' field of --input")
    return [Query(q.text, q.task, args.type) for q in queries]


def main(argv: list[str]) -> None:
    """``continual predict``: route and label texts with a finished run; one JSON line per text."""
    args = _arguments(argv)
    if args.output is not None:
        check_output_file(args.output, "--output")
    queries = _queries(args)
    with tempfile.TemporaryDirectory(prefix="continual-predict-") as scratch:
        bank = SavedBank(fetch_bank(args.run, args.tracking_uri, Path(scratch), "continual predict"), args.overrides)
        bank.check(queries, all_tasks=args.all_tasks)  # before the model loads
        if args.accept_rate is not None and bank.calibration is None:
            raise ContinualError(
                "--accept-rate: this bank has no calibration (router=oracle routes nothing, or the run was made "
                "before runs kept their calibration)"
            )
        quiet_libraries()
        predictor = bank.load(progress=not args.no_progress)
        if args.all_tasks:
            records = predictor.predict_all([q.text for q in queries])
        else:
            records = predictor.predict(queries, args.accept_rate)
        if args.output is None:
            for record in records:
                sys.stdout.write(json.dumps(record) + "\n")
            return
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(args.output) as tmp, tmp.open("w", encoding="utf-8") as out:
            for record in records:  # an existing --output file stays whole until this is done
                out.write(json.dumps(record) + "\n")
