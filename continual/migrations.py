"""Every shim for files written by earlier versions of ``continual``, in one place.

Each function takes what a loader read (a config, a checkpoint, tensor metadata, a router state) as
plain data and returns it in today's form; loaders call them before they look at what they read, so
nothing else in the package knows an old format. A new format change adds one function (or one entry)
here and a test that loads the old form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# Classes and functions that config files name in ``_target_`` and that have moved since: an old run's
# config.yaml still builds (resume, extend, predict, registered versions).
MOVED_TARGETS = {
    "continual.learners.AdapterPerTask": "continual.learners.AdapterPerTaskConfig",  # before learner configs
    "continual.backbone.Backbone.load": "continual.model.backbone.Backbone.load",  # before the wings (2026-12)
    "continual.backbone.EncoderLayout": "continual.model.backbone.EncoderLayout",
    "continual.training.TrainerConfig": "continual.model.training.TrainerConfig",
    "continual.schedule.EvalConfig": "continual.run.schedule.EvalConfig",
    "continual.cli.SweepTracking": "continual.commands.cli.SweepTracking",
}
EVAL_NODE = {"_target_": "continual.run.schedule.EvalConfig"}  # runs made before the schedule evaluated every step
# runs with learner.transfer=fusion made before attention fusion (2026-12-05) fused with static weights
STATIC_FUSION = {"_target_": "continual.adapters.fusion.FusionConfig", "kind": "static", "sources": "all"}


def target(name: str) -> str:
    """Today's dotted path of a ``_target_`` an older config names."""
    return MOVED_TARGETS.get(name, name)


def config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A run's resolved config as today's code reads it: moved targets renamed (at any depth), an eval node,
    static fusion where a fused run names no fusion kind."""

    def renamed(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: target(v) if k == "_target_" and isinstance(v, str) else renamed(v) for k, v in node.items()}
        if isinstance(node, list):
            return [renamed(v) for v in node]
        return node

    out = renamed(raw)
    if not out.get("eval"):
        out["eval"] = dict(EVAL_NODE)
    learner = out.get("learner")
    if isinstance(learner, dict) and learner.get("transfer") == "fusion" and "fusion" not in learner:
        learner["fusion"] = dict(STATIC_FUSION)
    return out


CHECKPOINT_VERSION = 3  # 3: matrices as evaluated cells [row, column, value]; 2: dense rows (null = not evaluated)
MATRICES = ("R", "oracle_acc", "router_acc")


def checkpoint(raw: dict[str, Any], finished: bool) -> dict[str, Any]:
    """A ``checkpoint.json`` at today's version; ``finished``: whether a run whose file predates the flag had
    written its summary. Raises ValueError for a version this code cannot read."""
    version = raw.get("version")
    if version not in (2, CHECKPOINT_VERSION):
        raise ValueError(f"version {version}, expected {CHECKPOINT_VERSION}")
    out = dict(raw)
    out.setdefault("finished", finished)
    out.setdefault("files", {})  # made before file hashes were recorded: nothing to verify
    if version == 2:
        for key in MATRICES:
            rows = np.array([[np.nan if v is None else v for v in row] for row in raw[key]], dtype=float)
            out[key] = [[int(i), int(j), float(rows[i, j])] for i, j in zip(*np.nonzero(np.isfinite(rows)))]
        out["version"] = CHECKPOINT_VERSION
    return out


def adapter_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """An adapter file's metadata: files made before token tasks existed name no kind (they hold sequence tasks);
    fused files made before attention fusion name no fusion kind (they hold static weights)."""
    fusion = {"fusion": "static"} if meta.get("transfer") == "fusion" else {}
    return {"kind": "sequence", **fusion, **meta}


def fusion_tensors(tensors: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Task ``k``'s file tensors: static fusion weights saved before attention fusion (``fusion.<site>``, over
    adapters 0..k) are renamed as a :class:`~continual.adapters.fusion.Fusion` holds them, with their sources."""
    out = dict(tensors)
    old = [name for name in out if name.startswith("fusion.")]
    if old and "fusion.sources" not in out:
        for name in old:
            out["fusion.mix." + name.removeprefix("fusion.")] = out.pop(name)
        out["fusion.sources"] = torch.arange(k + 1)
    return out


def router_state(state: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """Class statistics saved with the whole scatter matrix (before 2026-12) keep only its lower triangle now."""
    out = dict(state)
    whole = out.pop(f"{prefix}scatter", None)
    if whole is not None:
        out[f"{prefix}scatter_tril"] = whole[np.tril_indices(len(whole))]
    return out
