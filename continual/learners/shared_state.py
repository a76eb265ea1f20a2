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

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from continual.errors import ContinualError
from continual.streams import Task

if TYPE_CHECKING:
    from continual.learners.sequential import SequentialLearner


def state_path(directory: Path, tasks: int) -> Path:
    return directory / f"state_{tasks:02d}.safetensors"


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    tmp = path.with_suffix(".tmp")
    # clone: safetensors refuses tensors that share storage, which state dicts of some encoders contain
    save_file({n: t.detach().cpu().contiguous().clone() for n, t in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a truncated file
    return path


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{n}": t for n, t in state.items()}


def _strip(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}


def _options(value: object | None) -> str:
    return json.dumps(dataclasses.asdict(value)) if value is not None else ""  # type: ignore[call-overload]


def metadata(learner: SequentialLearner, tasks: Sequence[Task]) -> dict[str, str]:
    """What a state file must agree on with the run that loads it."""
    return {"learner": type(learner).__name__, "base": learner.base, "backbone": learner.backbone.name,
            "adapter": json.dumps({"kind": type(learner.adapter_config).__name__,
                                   **dataclasses.asdict(learner.adapter_config)}) if learner.base == "adapter" else "",
            "tasks": json.dumps([t.name for t in tasks]), "labels": json.dumps([list(t.labels) for t in tasks]),
            "memory": _options(learner.memory.config if learner.memory is not None else None),
            "ewc": _options(learner.ewc.config if learner.ewc is not None else None)}


def save(learner: SequentialLearner, directory: Path) -> list[Path]:
    """Write the head files and ``state_NN``; drop state files older than the previous one."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, task in enumerate(learner.tasks):
        meta = {"task": task.name, "index": str(k), "labels": json.dumps(list(task.labels)),
                "backbone": learner.backbone.name, "hidden_size": str(learner.backbone.hidden_size),
                "learner": f"{type(learner).__name__}(base={learner.base})"}
        paths.append(_write(directory / f"{k:02d}_{task.name}.safetensors",
                            _prefixed("head.", learner.heads[k].state_dict()), meta))
    tensors = _prefixed("shared.", learner.shared.state_dict())
    for k, head in enumerate(learner.heads):
        tensors.update(_prefixed(f"head.{k}.", head.state_dict()))
    if learner.memory is not None:
        tensors.update(_prefixed("memory.", learner.memory.state_dict()))
    if learner.ewc is not None:  # its anchor is the shared weights saved here: both are after the last task
        tensors.update(_prefixed("ewc.", learner.ewc.state_dict()))
    n = len(learner.tasks)
    paths.append(_write(state_path(directory, n), tensors, metadata(learner, learner.tasks)))
    for old in directory.glob("state_*.safetensors"):
        if old.stem[len("state_"):].isdigit() and int(old.stem[len("state_"):]) < n - 1:
            old.unlink()
    return paths


def load(learner: SequentialLearner, directory: Path, tasks: Sequence[Task]) -> None:
    """Restore ``learner`` (fresh) to its state after ``tasks``, checking the file was saved for this run."""
    if not tasks:
        return
    path = state_path(directory, len(tasks))
    if not path.is_file():
        raise ContinualError(f"{path}: missing, so the state after task {len(tasks)} ('{tasks[-1].name}') "
                             "cannot be restored")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    for key, value in metadata(learner, tasks).items():
        if meta.get(key) != value:
            raise ContinualError(f"{path}: saved for {key}={meta.get(key)}, but this run has {key}={value}; "
                                 "a learner's state only loads into the learner, backbone and tasks it was saved for")
    for task in tasks:
        learner._add_head(task)
    learner.shared.load_state_dict(_strip("shared.", tensors))
    for k, head in enumerate(learner.heads):
        head.load_state_dict(_strip(f"head.{k}.", tensors))
    if learner.memory is not None:
        learner.memory.load_state_dict(_strip("memory.", tensors))
    if learner.ewc is not None:
        learner.ewc.load_state_dict(_strip("ewc.", tensors))
    for p in [*learner.shared.parameters(), *learner.heads.parameters()]:
        p.requires_grad_(False)
