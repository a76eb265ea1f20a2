"""Task-agnostic prediction with a finished run: route each text, then label it with its task's adapter.

One call may mix texts of many tasks: the router picks a task per text (or rejects it), and each
batch runs every routed adapter once on its own slice. A text may also name its task (``task``
field or ``--task``), which bypasses the router, as an oracle run needs.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from continual import assemble, files
from continual.cmdline import check_output_file, subcommand_parser
from continual.errors import ContinualError, first_line
from continual.evaluation import encode_texts
from continual.learners import saved_tasks
from continual.learners.base import Learner, padded_batches, tokenize
from continual.routers.base import ABSTAIN, Reads, Router
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.routers.state import load_router
from continual.streams.sources import FORMATS, read_records, read_text

CHUNK = 1024  # texts routed together; bounds memory on large input files


@dataclass(frozen=True)
class Query:
    text: str
    task: str | None = None  # given task: skip the router


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


class Predictor:
    """A loaded learner + router and the names of the learned tasks and their labels."""

    def __init__(
        self,
        learner: Learner,
        router: Router,
        task_names: Sequence[str],
        labels: Sequence[Sequence[str]],
        progress: bool = True,
    ) -> None:
        self.learner, self.router = learner, router
        self.task_names, self.labels = list(task_names), [list(lab) for lab in labels]
        self.progress = progress

    def _task_index(self, name: str) -> int:
        if name not in self.task_names:
            raise ContinualError(f"task '{name}' is not a task of this run; tasks: {self.task_names}")
        return self.task_names.index(name)

    @torch.no_grad()
    def _chunk(self, queries: Sequence[Query]) -> Iterator[dict]:
        texts = [q.text for q in queries]
        given = np.array([-1 if q.task is None else self._task_index(q.task) for q in queries], dtype=np.int64)
        scores = None
        tasks = given.copy()
        if np.any(given < 0):
            routing = self.router.route(encode_texts(self.learner, texts))
            tasks = np.where(given < 0, routing.tasks, given)
            scores = routing.scores
        learner = self.learner
        tokens = tokenize(learner, texts)
        labels = np.full(len(texts), -1, np.int64)
        confidence = np.zeros(len(texts), np.float32)
        for idx, ids, mask in padded_batches(learner, tokens):
            # one mixed batch: every routed adapter runs once on its slice; rejected texts get no label
            out = learner.classify(ids, mask, torch.as_tensor(tasks[idx], device=learner.device))
            labels[idx], confidence[idx] = out.labels.cpu().numpy(), out.confidence.cpu().numpy()
        for n, text in enumerate(texts):
            k = int(tasks[n])
            yield {
                "text": text,
                "task": None if k == ABSTAIN else self.task_names[k],
                "label": None if k == ABSTAIN else self.labels[k][labels[n]],
                "confidence": None if k == ABSTAIN else round(float(confidence[n]), 6),
                "scores": None
                if scores is None or given[n] >= 0
                else {name: round(float(s), 6) for name, s in zip(self.task_names, scores[n])},
                "abstained": k == ABSTAIN,
                "routed": bool(given[n] < 0),
            }

    def predict(self, queries: Sequence[Query]) -> Iterator[dict]:
        """One JSON-ready record per query, in input order."""
        bar = tqdm(total=len(queries), desc="predict", unit="text", disable=not self.progress)
        for start in range(0, len(queries), CHUNK):
            chunk = queries[start : start + CHUNK]
            yield from self._chunk(chunk)
            bar.update(len(chunk))
        bar.close()


USAGE = """usage: continual predict RUN [--text TEXT ...] [--input FILE] [--output FILE] [--task NAME]
                         [--text-field text] [--tracking-uri URI] [--no-progress] [key=value ...]

RUN is a finished run's output folder, or an MLflow run id / runs:/<id> whose artifacts are read
from --tracking-uri (default: the embedded store runs/mlflow.db). Texts come from --text (repeatable)
or --input (.jsonl with a 'text' field and optional 'task', .csv/.tsv with a text column, .txt one per
line). One JSON line per text goes to --output (default stdout): text, task (null = rejected), label,
confidence, router scores per task, abstained. key=value overrides the saved config, e.g.
trainer.device=cuda trainer.eval_batch_size=256."""


def _arguments(argv: list[str]) -> Any:
    parser = subcommand_parser("predict", USAGE)
    parser.add_argument("run")
    parser.add_argument("--text", action="append", default=[])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--task")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    parser.add_argument("--no-progress", action="store_true")
    args, rest = parser.parse_known_args(argv)  # key=value overrides may sit anywhere
    bad = [o for o in rest if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments {bad}; config overrides look like key=value")
    args.overrides = rest
    if not args.text and args.input is None:
        parser.error("give texts with --text or --input")
    return args


def run_folder(run: str, tracking_uri: str, scratch: Path) -> Path:
    """A local folder holding the run's config.yaml, adapters/ and router.safetensors."""
    folder = Path(run)
    if folder.is_dir():
        if not (folder / "config.yaml").is_file():
            raise ContinualError(f"{folder}: not a run output folder (no config.yaml)")
        return folder
    run_id = run[len("runs:/") :].strip("/") if run.startswith("runs:/") else run
    if not (len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id)):
        raise ContinualError(f"continual predict: {run} is neither a run folder nor an MLflow run id")
    from continual.tracking.mlflow import open_store

    client = open_store(tracking_uri, Path.cwd())
    try:
        for name in ("config.yaml", "adapters", ROUTER_FILE):
            client.download_artifacts(run_id, name, str(scratch))
    except Exception as exc:  # MlflowException / OSError: missing run, artifact or store
        raise ContinualError(
            f"continual predict: cannot fetch artifacts of run {run_id} from {client.tracking_uri}: {first_line(exc)}"
        ) from exc
    return scratch


def saved_config(folder: Path, overrides: list[str]) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` with ``key=value`` overrides applied."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(
        OmegaConf.create(yaml.safe_load((folder / "config.yaml").read_text())), OmegaConf.from_dotlist(overrides)
    )
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


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
    return queries


def _predictor(folder: Path, overrides: list[str], queries: list[Query], progress: bool) -> Predictor:
    """Everything is checked (router state, task names, router kind) before the model loads."""
    config = saved_config(folder, overrides)
    if not (folder / ROUTER_FILE).is_file():
        raise ContinualError(
            f"{folder}: no router state ({ROUTER_FILE}); the run has not finished a task, or it "
            "was made before routers were saved"
        )
    tasks = saved_tasks(folder / "adapters")
    names = [t.name for t in tasks]
    unknown = sorted({q.task for q in queries if q.task and q.task not in names})
    if unknown:
        raise ContinualError(f"continual predict: tasks {unknown} are not tasks of this run; tasks: {names}")
    parts = assemble.parts(config)
    if parts.router.reads is Reads.TASK_IDS and any(q.task is None for q in queries):
        raise ContinualError(
            "continual predict: this run used router=oracle, which cannot route new text; give "
            "each text its task (--task NAME or a 'task' field) or train with a learned router"
        )
    backbone = assemble.backbone(config)
    learner = assemble.learner(parts, backbone, config["seed"])
    learner.load(folder / "adapters", tasks)
    load_router(parts.router, folder, names, backbone.name)
    return Predictor(learner, parts.router, names, [t.labels for t in tasks], progress=progress)


def main(argv: list[str]) -> None:
    """``continual predict``: route and label texts with a finished run; one JSON line per text."""
    from continual.runner import quiet_libraries

    args = _arguments(argv)
    if args.output is not None:
        check_output_file(args.output, "--output")
    queries = _queries(args)
    with tempfile.TemporaryDirectory(prefix="continual-predict-") as scratch:
        folder = run_folder(args.run, args.tracking_uri, Path(scratch))
        quiet_libraries()
        predictor = _predictor(folder, args.overrides, queries, progress=not args.no_progress)
        if args.output is None:
            for record in predictor.predict(queries):
                sys.stdout.write(json.dumps(record) + "\n")
            return
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(args.output) as tmp, tmp.open("w", encoding="utf-8") as out:
            for record in predictor.predict(queries):  # an existing --output file stays whole until this is done
                out.write(json.dumps(record) + "\n")
