"""Router state on disk: named arrays in one safetensors file, with the metadata to check it on load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from continual.errors import ContinualError
from continual.routers.base import Router

FILENAME = "router.safetensors"


def save_router(router: Router, directory: Path, task_names: list[str], backbone: str) -> Path:
    """Write ``directory/router.safetensors`` atomically (a crash never leaves a truncated file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILENAME
    state = {name: np.ascontiguousarray(value) for name, value in router.state_dict().items()}
    meta = {"router": type(router).__name__, "tasks": json.dumps(task_names), "backbone": backbone}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_router(router: Router, directory: Path, task_names: list[str], backbone: str) -> None:
    """Restore ``router`` from :func:`save_router`, after checking it was saved for this router, tasks and backbone."""
    path = directory / FILENAME
    if not path.is_file():
        raise ContinualError(f"{directory}: no router state ({FILENAME}); the run has not finished a task, or it "
                             "was made before routers were saved")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ContinualError(f"{path}: unreadable router state ({exc})") from exc
    expected = {"router": type(router).__name__, "tasks": json.dumps(task_names), "backbone": backbone}
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ContinualError(f"{path}: saved for {key}={meta.get(key)}, but this run has {key}={value}")
    router.load_state_dict(state)
