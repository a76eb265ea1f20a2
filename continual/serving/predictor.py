"""A saved bank answering texts: route each text (or take its given task), then label it with that task's adapter.

A *bank* is what a finished run leaves for answering: ``config.yaml``, ``adapters/`` and
``router.safetensors`` (a run folder, or the folder inside a registered model). One call may mix
texts of many tasks: the router picks a task per text (or rejects it), and each batch runs every
routed adapter once on its own slice. A text may also name its task, which bypasses the router, as
an oracle run needs. A bank also holds its run's :class:`continual.run.calibration.Calibration`, with
which it abstains on text far from every learned task (a run folder as a registered version does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from continual import files
from continual.errors import ContinualError
from continual.learners import saved_tasks
from continual.learners.base import Learner, encode, padded_batches
from continual.model.outputs import Classified
from continual.routers.base import ABSTAIN, Reads, Router, Routing, restrict
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.routers.state import load_router
from continual.run import assemble
from continual.run.calibration import Calibration
from continual.run.checkpoint import RunState, read_config
from continual.run.evaluation import encode_texts
from continual.streams import Task
from continual.streams.kinds import SEQUENCE

CHUNK = 1024  # texts routed together; bounds memory on large input files


@dataclass(frozen=True)
class Query:
    text: str
    task: str | None = None  # given task: skip the router
    kind: str | None = None  # route among tasks of this type only (a kind's name: sequence, tokens); None: among all


def saved_config(folder: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` with ``key=value`` overrides applied."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.create(read_config(folder)), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


class SavedBank:
    """A bank's files, read and checked; the backbone and adapters load only in :meth:`load`."""

    def __init__(self, folder: Path, overrides: Sequence[str] = ()) -> None:
        if not (folder / ROUTER_FILE).is_file():
            raise ContinualError(
                f"{folder}: no router state ({ROUTER_FILE}); the run has not finished a task, or it "
                "was made before routers were saved"
            )
        self.folder = folder
        state = RunState.load(folder)
        if state is not None:  # every file as the run wrote it (a bank made before hashes were recorded: unchecked)
            files.verify(folder, state.files)
        self.config = saved_config(folder, overrides)
        self.tasks = saved_tasks(folder / "adapters")
        self.names = [t.name for t in self.tasks]
        self.parts = assemble.parts(self.config)
        self.calibration = Calibration.load(folder)

    def check(self, queries: Sequence[Query], where: str = "continual predict", all_tasks: bool = False) -> None:
        """Every query's task is a learned task, its type one the bank has, and a bank that cannot route gets
        a task for each (``all_tasks``: every task runs on every text, nothing is routed)."""
        unknown = sorted({q.task for q in queries if q.task and q.task not in self.names})
        if unknown:
            raise ContinualError(f"{where}: tasks {unknown} are not tasks of this run; tasks: {self.names}")
        kinds = {t.kind.name for t in self.tasks}
        missing = sorted({q.kind for q in queries if q.kind and q.kind not in kinds})
        if missing:
            raise ContinualError(
                f"{where}: type {missing[0]}: this run has no task of that type (types: {sorted(kinds)})"
            )
        if all_tasks:
            return
        if self.parts.router.reads is Reads.TASK_IDS and any(q.task is None for q in queries):
            raise ContinualError(
                f"{where}: this run used router=oracle, which cannot route new text; give each text "
                "its task (--task NAME, a 'task' field, or the 'task' param) or train with a learned router"
            )

    def load(self, progress: bool = False) -> Predictor:
        backbone = assemble.backbone(self.config)
        learner = assemble.learner(self.parts, backbone, self.config["seed"])
        learner.load(self.folder / "adapters", self.tasks)
        load_router(self.parts.router, self.folder, self.names, backbone.name)
        return Predictor(learner, self.parts.router, self.tasks, progress, self.calibration)


class Predictor:
    """A loaded learner + router, the names of the learned tasks and their labels, and (for a bank made
    to serve) the calibration that makes it abstain on text far from every task."""

    def __init__(
        self,
        learner: Learner,
        router: Router,
        tasks: Sequence[Task],
        progress: bool = True,
        calibration: Calibration | None = None,
    ) -> None:
        self.learner, self.router, self.tasks = learner, router, list(tasks)
        self.task_names = [t.name for t in tasks]
        self.kinds = np.array([t.kind.name for t in tasks])
        self.progress = progress
        self.calibration = calibration

    def _task_index(self, name: str) -> int:
        if name not in self.task_names:
            raise ContinualError(f"task '{name}' is not a task of this run; tasks: {self.task_names}")
        return self.task_names.index(name)

    def _route(self, queries: Sequence[Query], threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Each query's task (given, routed among its ``kind``'s tasks, or -1 = rejected) and the router's scores."""
        given = np.array([-1 if q.task is None else self._task_index(q.task) for q in queries], dtype=np.int64)
        if not np.any(given < 0):
            return given, None
        routing = self.router.route(encode_texts(self.learner, [q.text for q in queries]))
        support = routing.in_scope()
        if support is not None:  # the calibrated rejection of a served bank, on top of the router's own
            routing = Routing(np.where(support < threshold, ABSTAIN, routing.tasks), routing.scores, support)
        routed = routing.tasks.copy()
        for kind in {q.kind for q in queries if q.kind}:
            mine = np.array([q.kind == kind for q in queries])
            routed[mine] = restrict(routing, self.kinds == kind)[mine]
        return np.where(given < 0, routed, given), routing.scores

    def _tokens(self, texts: Sequence[str], tasks: np.ndarray) -> tuple[list[list[int]], list[np.ndarray | None]]:
        """Token ids as each text's task's kind reads them (a tagger's: word-aligned, with word starts); texts
        that go to no task as a sequence task would (they are not labelled)."""
        tokens: list[list[int]] = [[] for _ in texts]
        starts: list[np.ndarray | None] = [None] * len(texts)
        kinds = [SEQUENCE if k < 0 else self.tasks[k].kind for k in tasks.tolist()]
        for kind in dict.fromkeys(kinds):
            mine = [i for i, of in enumerate(kinds) if of is kind]
            encoded = encode(self.learner, kind, [texts[i] for i in mine], "continual predict")
            for n, i in enumerate(mine):
                tokens[i] = encoded.tokens[n]
                starts[i] = None if encoded.starts is None else encoded.starts[n]
        return tokens, starts

    def _outputs(self, texts: Sequence[str], tasks: np.ndarray) -> list[dict[str, Any] | None]:
        """Each text's output under its task in mixed batches (every task's adapter runs once per batch on its
        slice), as its task's kind answers (a label and its confidence, a token task's entities, ...); None
        where the text went to no task."""
        learner = self.learner
        tokens, starts = self._tokens(texts, tasks)
        out: list[dict[str, Any] | None] = [None] * len(texts)
        for idx, ids, mask in padded_batches(learner, tokens):
            got = learner.classify(ids, mask, torch.as_tensor(tasks[idx], device=learner.device))
            for row, n in enumerate(idx.tolist()):
                k = int(tasks[n])
                if k >= 0:
                    task = self.tasks[k]
                    answer = Classified(*(t[row] for t in got))
                    out[n] = task.kind.answer(texts[n], starts[n], answer, task.labels)
        return out

    @torch.no_grad()
    def _chunk(self, queries: Sequence[Query], threshold: float) -> Iterator[dict]:
        texts = [q.text for q in queries]
        tasks, scores = self._route(queries, threshold)
        outputs = self._outputs(texts, tasks)
        for n, (query, output) in enumerate(zip(queries, outputs)):
            k = int(tasks[n])
            routed = query.task is None
            yield {
                "text": query.text,
                "task": None if k == ABSTAIN else self.task_names[k],
                "label": None if output is None else output.get("label"),
                "confidence": None if output is None else output.get("confidence"),
                **({"entities": output["entities"]} if output is not None and "entities" in output else {}),
                "scores": None
                if scores is None or not routed
                else {name: round(float(s), 6) for name, s in zip(self.task_names, scores[n])},
                "abstained": k == ABSTAIN,
                "routed": routed,
            }

    @torch.no_grad()
    def predict_all(self, texts: Sequence[str]) -> Iterator[dict]:
        """The hub: every task's output on each text (intent, slots, ...), in mixed batches of (text, task)
        pairs; with a router that can route, also its choice per task type (``routes``)."""
        T = len(self.task_names)
        bar = tqdm(total=len(texts), desc="predict all tasks", unit="text", disable=not self.progress)
        step = max(1, CHUNK // T)
        for start in range(0, len(texts), step):
            chunk = list(texts[start : start + step])
            pairs = [text for text in chunk for _ in range(T)]
            outputs = self._outputs(pairs, np.tile(np.arange(T), len(chunk)))
            routes = self._routes_by_kind(chunk)
            for n, text in enumerate(chunk):
                mine = outputs[n * T : (n + 1) * T]
                record: dict[str, Any] = {"text": text, "tasks": dict(zip(self.task_names, mine))}
                if routes is not None:
                    record["routes"] = {kind: chosen[n] for kind, chosen in routes.items()}
                yield record
            bar.update(len(chunk))
        bar.close()

    def _routes_by_kind(self, texts: Sequence[str]) -> dict[str, list[str | None]] | None:
        """For each task type of the bank, the task the router picks among that type's tasks (None: rejected)."""
        if self.router.reads is Reads.TASK_IDS:
            return None
        routing = self.router.route(encode_texts(self.learner, texts))
        return {
            str(kind): [None if k < 0 else self.task_names[k] for k in restrict(routing, self.kinds == kind).tolist()]
            for kind in dict.fromkeys(self.kinds.tolist())
        }

    def predict(self, queries: Sequence[Query], accept_rate: float | None = None) -> Iterator[dict]:
        """One JSON-ready record per query, in input order.

        A calibrated bank rejects routed texts that look less in-scope than ``accept_rate`` (default:
        its calibration's) of the learned tasks' validation inputs; without calibration only the
        router's own rejection applies, and ``accept_rate`` is an error.
        """
        if self.calibration is None and accept_rate is not None:
            raise ContinualError(
                "accept_rate: this bank has no calibration (a run folder; register the run to get one)"
            )
        threshold = -np.inf if self.calibration is None else self.calibration.threshold(accept_rate)
        bar = tqdm(total=len(queries), desc="predict", unit="text", disable=not self.progress)
        for start in range(0, len(queries), CHUNK):
            chunk = queries[start : start + CHUNK]
            yield from self._chunk(chunk, threshold)
            bar.update(len(chunk))
        bar.close()
