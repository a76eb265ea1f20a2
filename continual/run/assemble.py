"""From a resolved config (plain dicts and lists) to the objects of a run: used by run, resume and predict.

Each config group's node names a class or factory in ``_target_``; its other keys are the arguments
(a nested node with its own ``_target_`` is built first). This is all of Hydra's ``instantiate``
that ``continual`` needs, without Hydra: ``cli.py`` composes the config, everything here takes
plain values, and ``predict`` builds the same objects from a run's saved ``config.yaml``.

Everything that can be checked without data or a model is checked by :func:`parts`, so a bad value
is one error line before the stream is read or the backbone loads.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from continual.adapters import AdapterKind
from continual.checks import check_int
from continual.errors import ContinualError
from continual.learners import Learner, LearnerConfig
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig
from continual.routers import Router
from continual.run import compat
from continual.run.schedule import EvalConfig
from continual.streams import Concatenated, StreamSource, StreamSpec
from continual.tracking.base import Tracker
from continual.tracking.registry import check_model_name

log = logging.getLogger(__name__)


def locate(path: str, where: str) -> Any:
    """The object named by a dotted path (``package.module.Class.attribute``)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
            return found
        except AttributeError:
            break
    raise ContinualError(f"{where}._target_: cannot import {path!r}")


def build(node: Mapping[str, Any], where: str, **objects: Any) -> Any:
    """Call ``node['_target_']`` with the node's other keys and the live ``objects``; config errors are one line.

    Only a mismatch between the keys and the target's parameters is a config error here; errors
    raised while constructing propagate (a :class:`ContinualError` from validation is already one line).
    """
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ContinualError(f"{where}: expected a config node with a _target_, got {node!r}")
    target = locate(str(node["_target_"]), where)
    kwargs = {k: _value(v, f"{where}.{k}") for k, v in node.items() if k != "_target_"}
    odd = sorted(k for k in kwargs if k.startswith("_"))
    if odd:
        raise ContinualError(f"{where}: unsupported key {odd[0]!r} (only _target_ is special)")
    try:
        inspect.signature(target).bind(**kwargs, **objects)
    except TypeError as exc:
        raise ContinualError(f"{where}: {exc}") from exc
    return target(**kwargs, **objects)


def _value(value: Any, where: str) -> Any:
    if isinstance(value, Mapping) and "_target_" in value:
        return build(value, where)
    return value


CONCATENATED = "continual.streams.Concatenated"  # what `continual extend` writes: built part by part


def stream_file(path: Path) -> dict[str, Any]:
    """A stream file read without Hydra (scripts that take ``conf/stream/NAME.yaml``): its fields, less the
    ``defaults`` list with which a stream file may choose the run's adapter (Hydra's key, not the stream's)."""
    node = yaml.safe_load(path.read_text())
    node.pop("defaults", None)
    return node


def stream_source(node: Mapping[str, Any], where: str = "stream") -> StreamSource:
    """A stream config with ``_target_`` names its source class; one without is a plain stream file. The parts
    of a concatenated stream (an extension's) are sources of their own, built first."""
    if node.get("_target_") == CONCATENATED:
        parts = [
            (stream_source(part["source"], f"{where}.parts.{k}.source"), str(part["launch_dir"]))
            for k, part in enumerate(node["parts"])
        ]
        return Concatenated(str(node["name"]), parts)
    if "_target_" in node:
        return build(node, where)
    return StreamSpec.from_dict(node, where)


@dataclass(frozen=True)
class Parts:
    """The validated, model-free parts of a run."""

    trainer: TrainerConfig
    adapter: AdapterKind
    router: Router
    source: StreamSource
    learner: LearnerConfig
    evaluation: EvalConfig
    register: str | None  # the registered model each finished run becomes a version of (tracking.register)


def parts(config: Mapping[str, Any]) -> Parts:
    """Build and validate every part that needs neither data nor a model (top-level options included)."""
    check_int(config.get("seed"), "seed", low=0)
    check_int(config.get("threads"), "threads", low=1, optional=True)
    register = config["tracking"].get("register")
    if register is not None:
        check_model_name(register)
    learner: LearnerConfig = build(config["learner"], "learner")
    adapter: AdapterKind = build(config["adapter"], "adapter")
    compat.check_adapter(learner, adapter)
    return Parts(
        trainer=build(config["trainer"], "trainer"),
        adapter=adapter,
        router=compat.router_for(learner.head, build(config["router"], "router")),
        source=stream_source(config["stream"]),
        learner=learner,
        evaluation=build(config["eval"], "eval"),
        register=register,
    )


def tracker(
    node: Mapping[str, Any],
    launch_dir: Path,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    folder: Path | None = None,
) -> Tracker:
    """The tracker of a ``tracking`` config node (its ``register`` is not the tracker's: see :class:`Parts`): a new
    run, or the run ``run_id`` reopened; ``folder`` is the run folder it belongs to (None: a sweep's parent)."""
    node = {k: v for k, v in node.items() if k != "register"}
    objects = {"run_name": run_name, "tags": dict(tags or {}), "launch_dir": launch_dir, "run_id": run_id}
    return build(node, "tracking", **objects, folder=folder)


def backbone(config: Mapping[str, Any]) -> Backbone:
    return build(config["backbone"], "backbone")


def learner(parts: Parts, backbone: Backbone, seed: int) -> Learner:
    """The configured learner on ``backbone``; a ``trainer.max_length`` past its position limit is capped, said once."""
    if parts.trainer.max_length > backbone.max_tokens:
        log.warning(
            "trainer.max_length=%d is more than backbone '%s' can take (%d tokens): texts are cut to %d tokens",
            parts.trainer.max_length,
            backbone.name,
            backbone.max_tokens,
            backbone.max_tokens,
        )
    return parts.learner.build(backbone, parts.adapter, parts.trainer, seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def threads(count: int | None) -> Iterator[None]:
    """CPU threads while the block runs (None: as they are): torch's, and the BLAS pools numpy and scikit-learn
    use (the routers' eigendecompositions and solves), so that parallel jobs share the cores rather than spin on
    them (numpy's OpenBLAS was seen stalling an eigendecomposition for minutes on oversubscribed cores). The
    counts are restored afterwards: a job run in a process that goes on (a notebook, a basic multirun) leaves
    them as they were."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        with threadpool_limits(limits=int(count) if count else None, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
