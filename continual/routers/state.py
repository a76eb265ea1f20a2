"""Router state on disk: named arrays in one safetensors file, with the metadata to check it on load."""

from __future__ import annotations

import json
from pathlib import Path

from continual import files
from continual.errors import ContinualError
from continual.routers.base import Router

FILENAME = "router.safetensors"


def _metadata(router: Router, task_names: list[str], backbone: str) -> dict[str, str]:
    return {"router": type(router).__name__, "tasks": json.dumps(task_names), "backbone": backbone}


def save_router(router: Router, directory: Path, task_names: list[str], backbone: str) -> Path:
    """Write ``directory/router.safetensors`` atomically (a crash never leaves a truncated file)."""
    directory.mkdir(parents=True, exist_ok=True)
    return files.save_arrays(directory / FILENAME, router.state_dict(), _metadata(router, task_names, backbone))


def load_router(router: Router, directory: Path, task_names: list[str], backbone: str) -> None:
    """Restore ``router`` from :func:`save_router`, after checking it was saved for this router, tasks and backbone."""
    path = directory / FILENAME
    if not path.is_file():
        raise ContinualError(
            f"{directory}: no router state ({FILENAME}); the run has not finished a task, or it "
            "was made before routers were saved"
        )
    router.load_state_dict(files.read_checked(path, _metadata(router, task_names, backbone), framework="np"))
