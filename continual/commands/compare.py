"""``continual compare A B --input labelled.jsonl``: two banks (model versions or run folders) on the same texts.

Each text is routed and labelled by A, then by B (one bank loaded at a time). Per task: how many
texts each got right (the right task and label), and how many each routed to the right task; then
the texts on which they disagree. The comparison is logged as a run of the MLflow experiment
``continual-compare`` (metrics ``a/...``, ``b/...``, the disagreements as an artifact).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from continual import files
from continual.errors import ContinualError
from continual.logs import quiet_libraries
from continual.serving.predictor import Query, SavedBank
from continual.serving.registry import fetch_bank
from continual.streams.kinds import SEQUENCE
from continual.streams.sources import read_records
from continual.tracking.base import digest
from continual.tracking.mlflow import MLflowTracker
from continual.tracking.store import DEFAULT_URI

EXPERIMENT = "continual-compare"
NOT_LEARNED = "not learned"  # a task one of the banks never learned: no per-task score

USAGE = """usage: continual compare A B --input FILE [--output DIR] [--tracking-uri URI] [--no-log]

A and B are registered model versions (models:/NAME/VERSION, models:/NAME@alias), run folders or run
ids. FILE (.jsonl, .json, .csv, .tsv, .parquet) holds labelled texts: fields text, task and label.
Both banks route and label every text without being told its task; the table gives, per task, the
share each got right (task and label) and the share each routed right; then the texts on which they
disagree. Everything is logged as a run of experiment continual-compare in --tracking-uri (default
sqlite:///runs/mlflow.db) unless --no-log; --output DIR also writes comparison.md and
disagreements.jsonl there."""


@dataclass(frozen=True)
class Labelled:
    text: str
    task: str
    label: str


def read_labelled(path: Path) -> list[Labelled]:
    """Rows with non-empty ``text``, ``task`` and ``label`` fields (one line naming the first bad row)."""
    rows = []
    for location, row in read_records(path, "--input"):
        values = {key: row.get(key) for key in ("text", "task", "label")}
        bad = [key for key, value in values.items() if value is None or not str(value).strip()]
        if bad:
            raise ContinualError(f"--input: {location}: field '{bad[0]}' is missing or empty (need text, task, label)")
        rows.append(Labelled(str(values["text"]), str(values["task"]), str(values["label"])))
    if not rows:
        raise ContinualError(f"--input: {path} holds no texts")
    return rows


def learned_labels(bank: SavedBank, ref: str) -> dict[str, set[str]]:
    """The labels of each task of the bank that gives labels (one line if it has none)."""
    labels = {task.name: set(task.labels) for task in bank.tasks if task.kind.per_text}
    if not labels:
        raise ContinualError(f"continual compare {ref}: compares labels, and every task of this bank is a token task")
    return labels


def check_rows(rows: Sequence[Labelled], learned: Sequence[dict[str, set[str]]]) -> None:
    """Every row's task and label is one that at least one bank learned: anything else is a mistake in the input
    (a misspelt task or label), which would otherwise count as wrong for both."""
    for r in rows:
        if not any(r.task in labels for labels in learned):
            known = sorted(set().union(*learned))[:20]
            raise ContinualError(f"--input: task {r.task!r} is a task of neither bank; their tasks: {known}")
        if not any(r.label in labels.get(r.task, ()) for labels in learned):
            known = sorted(set().union(*(labels.get(r.task, set()) for labels in learned)))[:20]
            raise ContinualError(
                f"--input: label {r.label!r} is not a label of task {r.task} in either bank; its labels: {known}"
            )


def _queries(bank: SavedBank, ref: str, rows: Sequence[Labelled], learned: dict[str, set[str]]) -> list[Query]:
    """The rows as the bank is asked them: without their task, routed among the tasks that give labels."""
    kind = SEQUENCE.name if len(learned) < len(bank.tasks) else None
    queries = [Query(r.text, kind=kind) for r in rows]
    bank.check(queries, f"continual compare {ref}")  # an oracle bank cannot route: one line
    return queries


def scores(rows: Sequence[Labelled], got: Sequence[dict], learned: Mapping[str, set[str]]) -> dict[str, float]:
    """``acc``, ``router_acc`` over all rows (a task the bank never learned counts as wrong) and both per task
    (``acc/<task>``) for the tasks it learned; the others are listed by :func:`not_learned`."""
    right = np.array([g["task"] == r.task and g["label"] == r.label for r, g in zip(rows, got)])
    routed = np.array([g["task"] == r.task for r, g in zip(rows, got)])
    out = {"acc": float(right.mean()), "router_acc": float(routed.mean())}
    tasks = np.array([r.task for r in rows])
    for task in dict.fromkeys(r.task for r in rows if r.task in learned):
        mine = tasks == task
        out[f"acc/{task}"], out[f"router_acc/{task}"] = float(right[mine].mean()), float(routed[mine].mean())
    return out


def not_learned(rows: Sequence[Labelled], learned: Mapping[str, set[str]]) -> list[str]:
    return list(dict.fromkeys(r.task for r in rows if r.task not in learned))


def disagreements(rows: Sequence[Labelled], a: Sequence[dict], b: Sequence[dict]) -> list[dict]:
    return [
        {"text": r.text, "task": r.task, "label": r.label, "a": [x["task"], x["label"]], "b": [y["task"], y["label"]]}
        for r, x, y in zip(rows, a, b)
        if (x["task"], x["label"]) != (y["task"], y["label"])
    ]


def table(rows: Sequence[Labelled], a: dict[str, float], b: dict[str, float], names: tuple[str, str]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.task] = counts.get(r.task, 0) + 1
    lines = [
        f"| task | texts | {names[0]} acc | {names[1]} acc | {names[0]} routed | {names[1]} routed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, n in counts.items():
        per_task = [side.get(f"{key}/{task}") for key in ("acc", "router_acc") for side in (a, b)]
        shown = (NOT_LEARNED if v is None else f"{100 * v:.2f}" for v in per_task)
        lines.append(f"| {task} | {n} | " + " | ".join(shown) + " |")
    overall = [a["acc"], b["acc"], a["router_acc"], b["router_acc"]]
    lines.append(f"| **all** | {len(rows)} | " + " | ".join(f"**{100 * v:.2f}**" for v in overall) + " |")
    return "\n".join(lines)


def _log(uri: str, refs: tuple[str, str], path: Path, rows: Sequence[Labelled], result: dict, out: Path) -> str:
    tracker = MLflowTracker(uri, EXPERIMENT, run_name=f"{refs[0]} vs {refs[1]}", tags={"a": refs[0], "b": refs[1]})
    fingerprint = digest([r.text for r in rows], [f"{r.task}/{r.label}" for r in rows])
    tracker.log_params({"a": refs[0], "b": refs[1], "input": str(path.absolute()), "input_digest": fingerprint})
    tracker.log_metrics({f"{side}/{k}": v for side in ("a", "b") for k, v in result[side].items()}, step=0)
    tracker.log_metrics({"disagreements": float(len(result["disagreements"]))}, step=0)
    tracker.log_artifact(out)
    tracker.finish()
    return tracker.run_id


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def compare(a: str, b: str, rows: Sequence[Labelled], uri: str = DEFAULT_URI) -> dict:
    """Both banks' scores on the labelled ``rows``, the tasks each never learned, and the texts they answer
    differently. The rows are checked against both banks before either loads its model; then one is loaded at a
    time."""
    with tempfile.TemporaryDirectory(prefix="continual-compare-") as scratch:
        refs = {"a": a, "b": b}
        banks = {
            side: SavedBank(fetch_bank(ref, uri, _folder(Path(scratch) / side), "continual compare"))
            for side, ref in refs.items()
        }
        learned = {side: learned_labels(bank, refs[side]) for side, bank in banks.items()}
        check_rows(rows, list(learned.values()))
        asked = {side: _queries(bank, refs[side], rows, learned[side]) for side, bank in banks.items()}
        got = {side: list(bank.load(progress=False).predict(asked[side])) for side, bank in banks.items()}
    return {
        **{side: scores(rows, got[side], learned[side]) for side in refs},
        "not_learned": {side: not_learned(rows, learned[side]) for side in refs},
        "disagreements": disagreements(rows, got["a"], got["b"]),
    }


def main(argv: list[str]) -> None:
    from continual.commands.cmdline import check_output_folder, check_outside_runs, subcommand_parser

    parser = subcommand_parser("compare", USAGE)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    parser.add_argument("--no-log", action="store_true")
    args = parser.parse_args(argv)
    if args.output is not None:
        check_outside_runs(args.output, "--output")
        check_output_folder(args.output, "--output")
    quiet_libraries()
    rows = read_labelled(args.input)  # before any bank loads
    result = compare(args.a, args.b, rows, args.tracking_uri)
    text = table(rows, result["a"], result["b"], ("A", "B"))
    shown = result["disagreements"][:10]
    text += f"\n\nA = {args.a}\nB = {args.b}"
    for side in ("a", "b"):
        if result["not_learned"][side]:
            missed = ", ".join(result["not_learned"][side])
            text += f"\n{side.upper()} never learned {missed}: their texts count as wrong in its 'all' row"
    text += f"\n{len(result['disagreements'])} texts answered differently"
    text += "".join(f"\n  {d['text']!r}: A {d['a']}, B {d['b']} (truth {[d['task'], d['label']]})" for d in shown)
    with tempfile.TemporaryDirectory(prefix="continual-compare-") as scratch:
        out = args.output or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        files.write_text(out / "comparison.md", text + "\n")
        files.write_text(out / "disagreements.jsonl", "".join(json.dumps(d) + "\n" for d in result["disagreements"]))
        if not args.no_log:
            run_id = _log(args.tracking_uri, (args.a, args.b), args.input, rows, result, out)
            text += f"\nlogged as run {run_id} of experiment {EXPERIMENT}"
    print(text)
