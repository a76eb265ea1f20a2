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

from continual.adapters import AdapterKind
from continual.backbone import Backbone
from continual.errors import ContinualError
from continual.learners import Head, Learner, LearnerConfig
from continual.routers import HeadRouter, Reads, Router
from continual.schedule import EvalConfig
from continual.streams import StreamSource, StreamSpec
from continual.tracking.base import Tracker
from continual.training import TrainerConfig

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


def stream_source(node: Mapping[str, Any]) -> StreamSource:
    """A stream config with ``_target_`` names its source class; one without is a plain stream file."""
    if "_target_" in node:
        return build(node, "stream")
    return StreamSpec.from_dict(node, "stream")


def _check_int(config: Mapping[str, Any], key: str, minimum: int, optional: bool = False) -> None:
    value = config.get(key)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ContinualError(f"{key} must be an integer >= {minimum}{' or null' if optional else ''}, got {value!r}")


# run folders saved before learners had config classes name the learner class itself
_LEARNER_TARGETS = {"continual.learners.AdapterPerTask": "continual.learners.AdapterPerTaskConfig"}


@dataclass(frozen=True)
class Parts:
    """The validated, model-free parts of a run."""

    trainer: TrainerConfig
    adapter: AdapterKind
    router: Router
    source: StreamSource
    learner: LearnerConfig
    evaluation: EvalConfig


def parts(config: Mapping[str, Any]) -> Parts:
    """Build and validate every part that needs neither data nor a model (top-level options included)."""
    _check_int(config, "seed", 0)
    _check_int(config, "threads", 1, optional=True)
    if config["tracking"].get("register") is not None:
        from continual.registry import check_model_name

        check_model_name(config["tracking"]["register"])
    learner = dict(config["learner"])
    target = str(learner.get("_target_", ""))
    learner["_target_"] = _LEARNER_TARGETS.get(target, target)
    learner_config: LearnerConfig = build(learner, "learner")
    return Parts(
        trainer=build(config["trainer"], "trainer"),
        adapter=build(config["adapter"], "adapter"),
        router=router_for(learner_config, build(config["router"], "router")),
        source=stream_source(config["stream"]),
        learner=learner_config,
        # runs saved before the schedule existed have no eval node: they evaluated everything, every step
        evaluation=build(config.get("eval") or {"_target_": "continual.schedule.EvalConfig"}, "eval"),
    )


def router_for(learner: LearnerConfig, router: Router) -> Router:
    """The configured router, except for a learner with one head over all labels: it routes itself."""
    if learner.head is Head.ALL_SEEN and router.reads is not Reads.ONE_HEAD:
        if router.reads is not Reads.TASK_IDS:
            log.info(
                "the learner has one head over all labels seen so far: it predicts by its own argmax "
                "(router=head), not with router %s",
                type(router).__name__,
            )
        return HeadRouter()
    return router


def tracker(
    node: Mapping[str, Any],
    launch_dir: Path,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Tracker:
    """The tracker of a ``tracking`` config node: a new run, or the run ``run_id`` reopened."""
    return build(node, "tracking", run_name=run_name, tags=dict(tags or {}), launch_dir=launch_dir, run_id=run_id)


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
    """torch CPU threads while the block runs (None: as they are); parallel jobs share the cores. The count is
    restored afterwards: a job run in a process that goes on (a notebook, a basic multirun) leaves it as it was."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
