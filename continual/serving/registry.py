"""Registered banks: with ``tracking.register=NAME`` every run and every extension becomes a version of model NAME.

* :class:`PublishSink`: at the end of a run its *bank* (config, adapters, router state, calibration, and
  the checkpoint, origin and results that ``continual extend`` continues from) is saved as a pyfunc
  model (:mod:`continual.serving.pyfunc`) in the run's artifacts and registered, tagged with its tasks
  and ACC. The backbone is named by the config, not copied: a version weighs its adapters and router.
* :func:`fetch_bank`: a run folder, a run id, or a model version (``models:/NAME/3``,
  ``models:/NAME@champion``) as a local bank folder.

Versions, aliases and their history live behind the registry door, :mod:`continual.tracking.registry`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continual import files
from continual.errors import ContinualError
from continual.learners.base import Learner
from continual.logs import quiet_libraries
from continual.routers.base import Router
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.run.calibration import CALIBRATION, DEFAULT_ACCEPT_RATE, calibrate
from continual.run.checkpoint import CONFIG, ORIGIN, RunState
from continual.serving.pyfunc import save_model
from continual.streams import Task
from continual.tracking import registry
from continual.tracking.base import Tracker

if TYPE_CHECKING:
    from continual.run.experiment import RunResult, StepRecord

log = logging.getLogger("continual")

BANK_FILES = (CONFIG, ORIGIN, "checkpoint.json", "results.json", ROUTER_FILE)
MAX_TAG = 4000  # MLflow caps tag values; longer task lists are cut (the bank keeps them all)


def make_bank(run_dir: Path, dest: Path, learner: Learner, router: Router, tasks: Sequence[Task]) -> Path:
    """The run's bank at ``dest``: its answering files, its state marked finished, and the calibration."""
    (dest / "adapters").mkdir(parents=True)
    for name in BANK_FILES:
        if name != "checkpoint.json" and (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    for path in sorted((run_dir / "adapters").glob("*.safetensors")):
        shutil.copy2(path, dest / "adapters" / path.name)
    state = RunState.load(run_dir)
    assert state is not None
    if (run_dir / CALIBRATION).is_file():
        shutil.copy2(run_dir / CALIBRATION, dest / CALIBRATION)
    elif (made := calibrate(learner, router, tasks, router.accept_rate or DEFAULT_ACCEPT_RATE)) is not None:
        state.files[CALIBRATION] = files.sha256(made.save(dest))  # a run made before runs kept their calibration
    files.verify(dest, state.files)  # the copies are what the run wrote
    state.finished = True  # the registered bank is the finished run, which an extension continues
    state.save(dest)
    return dest


def _tasks_tag(names: Sequence[str]) -> str:
    text = ",".join(names)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 20].rsplit(",", 1)[0] + f",... ({len(names)} tasks)"


def version_tags(state: RunState, config: dict[str, Any]) -> dict[str, str]:
    """What a version says of itself in the registry: its tasks, ACC (both protocols), router accuracy, stream."""
    metrics = state.metrics()
    return {
        "tasks": _tasks_tag(state.task_names),
        "num_tasks": str(len(state.task_names)),
        "avg_acc": f"{metrics['avg_acc']:.4f}",
        "oracle_avg_acc": f"{state.oracle_average:.4f}",
        "router_acc": f"{state.router_accuracy:.4f}",
        "stream": str(config["stream"].get("name", "")),
        "backbone": str(config["backbone"]["name"]),
    }


class PublishSink:
    """The last sink of a run with ``tracking.register=NAME``: its bank becomes a new version of model NAME."""

    def __init__(
        self,
        name: str,
        tracker: Tracker,
        run_dir: Path,
        config: dict[str, Any],
        learner: Learner,
        router: Router,
        tasks: Sequence[Task],
    ) -> None:
        self.name, self.tracker, self.run_dir, self.config = name, tracker, run_dir, config
        self.learner, self.router, self.tasks = learner, router, tasks
        self.version: str | None = None

    def on_step(self, record: StepRecord, state: RunState) -> None:
        pass

    def on_end(self, result: RunResult, totals: dict[str, float]) -> None:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="continual-bank-") as scratch:
            bank = make_bank(self.run_dir, Path(scratch) / "bank", self.learner, self.router, self.tasks)
            model = save_model(bank, Path(scratch) / registry.MODEL_ARTIFACT, str(self.config["backbone"]["name"]))
            tags = version_tags(result.state, self.config)
            self.version = registry.publish(self.tracker.uri, self.tracker.run_id, self.name, model, tags)
        log.info("registered as model %s version %s (%.1f s)", self.name, self.version, time.perf_counter() - start)


def fetch_bank(ref: str, uri: str, scratch: Path, where: str) -> Path:
    """A local folder holding the bank of ``ref``: a run folder (as is), a run id / ``runs:/<id>``, or a
    registered version ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (downloaded into ``scratch``)."""
    folder = Path(ref)
    if folder.is_dir():
        if not (folder / CONFIG).is_file():
            raise ContinualError(f"{folder}: not a run output folder (no {CONFIG})")
        return folder
    if not registry.MODEL_URI.match(ref) and not registry.run_id_of(ref):
        raise ContinualError(
            f"{where}: {ref} is neither a run folder, an MLflow run id, nor a model version (models:/NAME/VERSION)"
        )
    quiet_libraries()
    return registry.download(uri, ref, (CONFIG, "adapters", ROUTER_FILE), scratch)
