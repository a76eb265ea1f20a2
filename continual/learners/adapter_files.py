"""A run's ``adapters/`` folder: one safetensors file per task (its adapter, head and fusion weights), each
written once, with the metadata that says what it may be loaded onto."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from continual import files, migrations
from continual.errors import ContinualError
from continual.streams import Split, Task
from continual.streams.kinds import kind_named

CHECKED = ("backbone", "hidden_size", "adapter", "labels", "transfer", "kind")  # must match to load a file
HINT = "adapters only load onto the backbone, adapter config and labels they were trained with"


def task_file(directory: Path, k: int, name: str) -> Path:
    """Task ``k``'s file in a run's adapters folder: ``NN_<task>.safetensors``."""
    return directory / f"{k:02d}_{name}.safetensors"


class AdapterFiles:
    """Reads and writes task files; remembers which files already hold a task as it is. A learned adapter is
    frozen, so a later save skips them: its file stays byte-identical, and a save costs one file, not one per
    task so far."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype  # what the files hold (weights are rounded to it once trained)
        self.on_disk: set[Path] = set()

    def write(self, path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
        """Write one task's file unless it already holds the task; whether it was written."""
        if path.absolute() in self.on_disk and path.is_file():
            return False
        stored = {name: t.to(self.dtype) if t.is_floating_point() else t for name, t in tensors.items()}
        files.save_tensors(path, stored, metadata)
        self.on_disk.add(path.absolute())
        return True

    def read(self, path: Path, expected: Mapping[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """One task's tensors and metadata, after checking the :data:`CHECKED` keys against ``expected``."""
        checked = {key: expected[key] for key in CHECKED}
        tensors = files.read_checked(path, checked, hint=HINT, upgrade=migrations.adapter_metadata)
        self.on_disk.add(path.absolute())
        return tensors, migrations.adapter_metadata(files.read_metadata(path))


def saved_tasks(directory: Path) -> list[Task]:
    """The tasks (names and labels, no data) whose files a learner's ``save`` wrote to ``directory``."""
    found = directory.glob("[0-9][0-9]*_*.safetensors") if directory.is_dir() else ()
    # NN_<task> up to 99, then 100_<task>, ...: ordered by the number, not as strings
    paths = sorted((p for p in found if p.name.split("_", 1)[0].isdigit()), key=lambda p: int(p.name.split("_", 1)[0]))
    if not paths:
        raise ContinualError(f"{directory}: no saved adapters (NN_<task>.safetensors)")
    empty = Split((), np.zeros(0, dtype=np.int64))
    tasks = []
    for k, path in enumerate(paths):
        meta = migrations.adapter_metadata(files.read_metadata(path))
        if meta.get("index") != str(k) or "labels" not in meta or "task" not in meta:
            raise ContinualError(f"{path}: not adapter {k} of a run (metadata index={meta.get('index')!r})")
        kind = kind_named(meta["kind"], f"{path}: metadata")
        tasks.append(Task(meta["task"], tuple(json.loads(meta["labels"])), empty, empty, empty, kind=kind))
    return tasks
