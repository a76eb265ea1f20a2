"""Task-agnostic prediction with a finished run: route each text, then label it with its task's adapter.

One call may mix texts of many tasks: the router picks a task per text (or rejects it), and each
batch runs every routed adapter once on its own slice. A text may also name its task (``task``
field or ``--task``), which bypasses the router, as an oracle run needs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from continual.errors import ContinualError
from continual.evaluation import encode_texts
from continual.learners.base import Learner
from continual.routers.base import ABSTAIN, Router
from continual.training import eval_batches, iter_padded

CHUNK = 1024  # texts routed together; bounds memory on large input files


@dataclass(frozen=True)
class Query:
    text: str
    task: str | None = None  # given task: skip the router


def read_queries(path: Path, text_field: str = "text") -> list[Query]:
    """Texts from ``.jsonl`` (objects with ``text_field`` and optional ``task``), ``.csv`` or ``.txt`` (one per line)."""
    if not path.is_file():
        raise ContinualError(f"--input: file not found: {path}")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    if suffix in (".jsonl", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ContinualError(f"{path} line {n}: not a JSON object ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ContinualError(f"{path} line {n}: expected a JSON object with field '{text_field}'")
            rows.append({"_where": f"{path} line {n}", **row})
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            if text_field not in (reader.fieldnames or []):
                raise ContinualError(f"{path}: no column '{text_field}' (columns: {reader.fieldnames}); "
                                     "choose one with --text-field")
            rows = [{"_where": f"{path} row {n}", **row} for n, row in enumerate(reader, 1)]
    elif suffix == ".txt":
        rows = [{"_where": f"{path} line {n}", text_field: line}
                for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    else:
        raise ContinualError(f"--input: {path} must be .jsonl, .csv, .tsv or .txt")
    queries = []
    for row in rows:
        text = row.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise ContinualError(f"{row['_where']}: field '{text_field}' must be a non-empty string, got {text!r}")
        task = row.get("task") or None
        queries.append(Query(text, None if task is None else str(task)))
    if not queries:
        raise ContinualError(f"--input: {path} holds no texts")
    return queries


class Predictor:
    """A loaded learner + router and the names of the learned tasks and their labels."""

    def __init__(self, learner: Learner, router: Router, task_names: Sequence[str],
                 labels: Sequence[Sequence[str]], progress: bool = True) -> None:
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
        tokens = learner.backbone.tokenize(texts, learner.trainer.max_length)
        labels = np.full(len(texts), -1, np.int64)
        confidence = np.zeros(len(texts), np.float32)
        batches = eval_batches([len(t) for t in tokens], learner.trainer.eval_batch_size)
        for idx, ids, mask in iter_padded(tokens, batches, learner.pad_id, learner.device):
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
                "scores": None if scores is None or given[n] >= 0 else
                {name: round(float(s), 6) for name, s in zip(self.task_names, scores[n])},
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
