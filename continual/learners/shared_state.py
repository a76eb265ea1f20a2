"""Saved state of the shared-parameter learners (:class:`SequentialLearner`, :class:`JointLearner`).

In the adapters folder of a run:

* ``NN_<task>.safetensors``: task NN's head (``head.*``) with the metadata AdapterPerTask writes
  (task, index, labels, backbone), so ``saved_tasks`` and ``continual predict`` read it the same way;
* ``state_NN.safetensors``: everything after NN tasks: the shared weights (``shared.*``: the
  adapter, or the whole fine-tuned encoder), every head (``head.K.*``, replay trains old heads too),
  the replay memory (``memory.*``) and EWC's Fisher (``ewc.*``).

Shared weights and old heads change at every task, so a file rewritten in place could hold a
newer task's weights than ``checkpoint.json`` says. The previous ``state_NN`` is therefore kept
until the next one is written: whatever moment a run is killed, the state its checkpoint names is
on disk. All files are written atomically (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from continual import files
from continual.adapters import describe
from continual.learners.adapter_per_task import task_file
from continual.learners.base import freeze
from continual.streams import Task

if TYPE_CHECKING:
    from continual.learners.sequential import SequentialLearner


def state_path(directory: Path, tasks: int) -> Path:
    return directory / f"state_{tasks:02d}.safetensors"


def _options(value: object | None) -> str:
    return json.dumps(dataclasses.asdict(value)) if value is not None else ""  # type: ignore[call-overload]


def metadata(learner: SequentialLearner, tasks: Sequence[Task]) -> dict[str, str]:
    """What a state file must agree on with the run that loads it."""
    return {
        "learner": type(learner).__name__,
        "base": learner.base,
        "backbone": learner.backbone.name,
        "adapter": describe(learner.adapter_config) if learner.base == "adapter" else "",
        "tasks": json.dumps([t.name for t in tasks]),
        "labels": json.dumps([list(t.labels) for t in tasks]),
        "memory": _options(learner.memory.config if learner.memory is not None else None),
        "ewc": _options(learner.ewc.config if learner.ewc is not None else None),
    }


def save(learner: SequentialLearner, directory: Path) -> list[Path]:
    """Write the head files and ``state_NN``; drop state files older than the previous one."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, task in enumerate(learner.tasks):
        meta = {
            "task": task.name,
            "index": str(k),
            "labels": json.dumps(list(task.labels)),
            "backbone": learner.backbone.name,
            "hidden_size": str(learner.backbone.hidden_size),
            "learner": f"{type(learner).__name__}(base={learner.base})",
        }
        paths.append(
            files.save_tensors(
                task_file(directory, k, task.name), files.with_prefix("head.", learner.heads[k].state_dict()), meta
            )
        )
    tensors = files.with_prefix("shared.", learner.shared.state_dict())
    for k, head in enumerate(learner.heads):
        tensors.update(files.with_prefix(f"head.{k}.", head.state_dict()))
    if learner.memory is not None:
        tensors.update(files.with_prefix("memory.", learner.memory.state_dict()))
    if learner.ewc is not None:  # its anchor is the shared weights saved here: both are after the last task
        tensors.update(files.with_prefix("ewc.", learner.ewc.state_dict()))
    n = len(learner.tasks)
    paths.append(files.save_tensors(state_path(directory, n), tensors, metadata(learner, learner.tasks)))
    for old in directory.glob("state_*.safetensors"):
        if old.stem[len("state_") :].isdigit() and int(old.stem[len("state_") :]) < n - 1:
            old.unlink()
    return paths


def load(learner: SequentialLearner, directory: Path, tasks: Sequence[Task]) -> None:
    """Restore ``learner`` (fresh) to its state after ``tasks``, checking the file was saved for this run."""
    if not tasks:
        return
    tensors = files.read_checked(
        state_path(directory, len(tasks)),
        metadata(learner, tasks),
        hint="a learner's state only loads into the learner, backbone and tasks it was saved for",
    )
    for task in tasks:
        learner._add_head(task)
    learner.shared.load_state_dict(files.strip_prefix("shared.", tensors))
    for k, head in enumerate(learner.heads):
        head.load_state_dict(files.strip_prefix(f"head.{k}.", tensors))
    if learner.memory is not None:
        learner.memory.load_state_dict(files.strip_prefix("memory.", tensors))
    if learner.ewc is not None:
        learner.ewc.load_state_dict(files.strip_prefix("ewc.", tensors))
    freeze(learner.shared, learner.heads)
