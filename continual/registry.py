"""Registered banks: with ``tracking.register=NAME`` every run and every extension becomes a version of model NAME.

* :func:`publish`: at the end of a run its *bank* (config, adapters, router state, calibration, and
  the checkpoint, origin and results that ``continual extend`` continues from) is saved as a pyfunc
  model (:mod:`continual.serving`) in the run's artifacts and registered, tagged with its tasks and
  ACC. The backbone is named by the config, not copied: a version weighs its adapters and router.
* :func:`versions` and :func:`alias_history` (``continual registry NAME``), :func:`promote`
  (``continual promote NAME VERSION --alias champion``; rollback is promoting an older version).
  MLflow keeps no history of alias moves, so each move is also recorded as a small run in the
  experiment ``continual-registry``.
* :func:`fetch_bank`: a run folder, a run id, or a model version (``models:/NAME/3``,
  ``models:/NAME@champion``) as a local bank folder.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual.checkpoint import CONFIG, ORIGIN, RunState
from continual.errors import ContinualError, first_line
from continual.learners.base import Learner
from continual.predictor import DEFAULT_ACCEPT_RATE, calibrate
from continual.routers.base import Router
from continual.routers.state import FILENAME as ROUTER_FILE
from continual.streams import Task
from continual.tracking.base import Tracker
from continual.tracking.mlflow import DEFAULT_URI, MODEL_ARTIFACT, open_store

log = logging.getLogger("continual")

BANK_FILES = (CONFIG, ORIGIN, "checkpoint.json", "results.json", ROUTER_FILE)
HISTORY_EXPERIMENT = "continual-registry"  # one small run per alias move
MAX_TAG = 4000  # MLflow caps tag values; longer task lists are cut (the bank keeps them all)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

__all__ = ["DEFAULT_URI", "fetch_bank", "promote", "publish", "versions"]


def check_model_name(name: Any, where: str = "tracking.register") -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise ContinualError(
            f"{where}={name!r}: a registered model name is 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


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
    state.finished = True  # the registered bank is the finished run, which an extension continues
    state.save(dest)
    calibration = calibrate(learner, router, tasks, router.accept_rate or DEFAULT_ACCEPT_RATE)
    if calibration is not None:
        calibration.save(dest)
    return dest


def _tasks_tag(names: Sequence[str]) -> str:
    text = ",".join(names)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 20].rsplit(",", 1)[0] + f",... ({len(names)} tasks)"


def version_tags(state: RunState, config: dict[str, Any]) -> dict[str, str]:
    """What a version says of itself in the registry: its tasks, ACC (both protocols), router accuracy, stream."""
    metrics = state.metrics()
    tags = {
        "tasks": _tasks_tag(state.task_names),
        "num_tasks": str(len(state.task_names)),
        "avg_acc": f"{metrics['avg_acc']:.4f}",
        "oracle_avg_acc": f"{state.oracle_average:.4f}",
        "router_acc": f"{state.router_accuracy:.4f}",
        "stream": str(config["stream"].get("name", "")),
        "backbone": str(config["backbone"]["name"]),
    }
    return tags


def publish(
    tracker: Tracker,
    run_dir: Path,
    config: dict[str, Any],
    learner: Learner,
    router: Router,
    tasks: Sequence[Task],
) -> str | None:
    """Register the finished run's bank as a new version of ``tracker.register``; the version (None: no registry)."""
    from continual.serving import save_model

    if not tracker.register:
        return None
    state = RunState.load(run_dir)
    assert state is not None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="continual-bank-") as scratch:
        bank = make_bank(run_dir, Path(scratch) / "bank", learner, router, tasks)
        model = save_model(bank, Path(scratch) / MODEL_ARTIFACT, str(config["backbone"]["name"]))
        version = tracker.publish(model, version_tags(state, config))
    log.info("registered as model %s version %s (%.1f s)", tracker.register, version, time.perf_counter() - start)
    return version


@dataclass(frozen=True)
class Version:
    """One registered version, as ``continual registry`` lists it."""

    version: int
    created: float  # seconds since the epoch
    tags: dict[str, str]
    aliases: list[str]
    run_id: str


def _client(uri: str) -> Any:
    return open_store(uri, Path.cwd())


def versions(name: str, uri: str = DEFAULT_URI) -> list[Version]:
    """Every version of model ``name``, oldest first (one line if there is no such model)."""
    client = _client(uri)
    found = client.search_model_versions(f"name = '{name}'")
    if not found:
        raise ContinualError(f"no registered model {name!r} in {client.tracking_uri}")
    aliases: dict[str, list[str]] = {}  # searched versions carry no aliases; the model has them all
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    listed = [
        Version(int(v.version), v.creation_timestamp / 1000, dict(v.tags), aliases.get(str(v.version), []), v.run_id)
        for v in found
    ]
    return sorted(listed, key=lambda v: v.version)


def _model_version(client: Any, name: str, ref: str) -> Any:
    """The version ``ref`` (a number, or @alias) of model ``name`` (one line if there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        return client.get_model_version(name, str(int(ref)))
    except (MlflowException, ValueError) as exc:
        raise ContinualError(f"models:/{name}/{ref}: no such registered model version ({first_line(exc)})") from exc


def promote(name: str, version: str, alias: str = "champion", uri: str = DEFAULT_URI) -> str | None:
    """Point ``alias`` at ``version`` of ``name`` and record the move; the version it pointed at before, if any."""
    from mlflow.exceptions import MlflowException

    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$", alias) or alias.lower() == "latest" or re.match(r"^v\d+$", alias):
        raise ContinualError(f"--alias {alias!r}: an alias is letters, digits, '_' or '-' (not 'latest', not v<N>)")
    client = _client(uri)
    target = _model_version(client, name, version)
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, target.version)
    _record_move(client, name, alias, str(target.version), previous)
    return previous


def _record_move(client: Any, name: str, alias: str, version: str, previous: str | None) -> None:
    found = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    experiment = found.experiment_id if found else client.create_experiment(HISTORY_EXPERIMENT)
    tags = {"model": name, "alias": alias, "version": version, "previous_version": previous or ""}
    run = client.create_run(experiment, run_name=f"{name}@{alias} -> v{version}", tags=tags)
    client.set_terminated(run.info.run_id)


def alias_history(name: str, uri: str = DEFAULT_URI) -> list[dict[str, str]]:
    """Every recorded alias move of model ``name``, oldest first: alias, version, previous version, when."""
    client = _client(uri)
    found = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], f"tags.model = '{name}'", order_by=["attributes.start_time ASC"])
    return [
        {
            "alias": r.data.tags["alias"],
            "version": r.data.tags["version"],
            "previous": r.data.tags.get("previous_version", ""),
            "at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.info.start_time / 1000)),
        }
        for r in runs
    ]


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


def fetch_bank(ref: str, uri: str, scratch: Path, where: str) -> Path:
    """A local folder holding the bank of ``ref``: a run folder (as is), a run id / ``runs:/<id>``, or a
    registered version ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (downloaded into ``scratch``)."""
    folder = Path(ref)
    if folder.is_dir():
        if not (folder / CONFIG).is_file():
            raise ContinualError(f"{folder}: not a run output folder (no {CONFIG})")
        return folder
    model = MODEL_URI.match(ref)
    if model:
        client = _client(uri)
        found = _model_version(client, model["name"], model["version"] or f"@{model['alias']}")
        return _download(client, found.run_id, f"{MODEL_ARTIFACT}/artifacts/bank", scratch, ref)
    run_id = ref[len("runs:/") :].strip("/") if ref.startswith("runs:/") else ref
    if not (len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id)):
        raise ContinualError(
            f"{where}: {ref} is neither a run folder, an MLflow run id, nor a model version (models:/NAME/VERSION)"
        )
    client = _client(uri)
    for name in (CONFIG, "adapters", ROUTER_FILE):
        _download(client, run_id, name, scratch, ref)
    return scratch


def _download(client: Any, run_id: str, path: str, scratch: Path, ref: str) -> Path:
    from continual.runner import quiet_libraries

    quiet_libraries()
    try:
        return Path(client.download_artifacts(run_id, path, str(scratch)))
    except Exception as exc:  # MlflowException / OSError: missing run, artifact or store
        raise ContinualError(f"{ref}: cannot fetch {path} from {client.tracking_uri}: {first_line(exc)}") from exc


REGISTRY_USAGE = """usage: continual registry NAME [--tracking-uri URI]

Lists the versions of registered model NAME (made by runs with tracking.register=NAME): when each
was created, its tasks, its ACC without task ids and with them, its routing accuracy, its aliases and
the run it came from; then every alias move. Default store: sqlite:///runs/mlflow.db."""

PROMOTE_USAGE = """usage: continual promote NAME VERSION [--alias champion] [--tracking-uri URI]

Points the alias (default: champion) of registered model NAME at VERSION; rolling back is promoting
an older version. Servers started with models:/NAME@champion pick the version up when they restart.
Each move is recorded (see continual registry NAME)."""


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _tasks_cell(tags: dict[str, str]) -> str:
    names = tags.get("tasks", "")
    return f"{tags.get('num_tasks', '?')}: {names if len(names) <= 60 else names[:57] + '...'}"


def registry_text(name: str, uri: str) -> str:
    """``continual registry NAME``: the versions, then the alias moves."""
    rows = [["version", "created", "ACC", "task-given", "router", "aliases", "run", "tasks"]]
    for v in versions(name, uri):
        rows.append(
            [
                str(v.version),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created)),
                v.tags.get("avg_acc", ""),
                v.tags.get("oracle_avg_acc", ""),
                v.tags.get("router_acc", ""),
                ",".join(v.aliases) or "-",
                v.run_id[:12],
                _tasks_cell(v.tags),
            ]
        )
    moves = [
        f"{m['at']}  {m['alias']} -> v{m['version']}" + (f" (was v{m['previous']})" if m["previous"] else "")
        for m in alias_history(name, uri)
    ]
    return f"model {name}: {len(rows) - 1} versions\n{_table(rows)}\n\nalias moves:\n" + ("\n".join(moves) or "none")


def main_registry(argv: list[str]) -> None:
    from continual.cmdline import subcommand_parser

    parser = subcommand_parser("registry", REGISTRY_USAGE)
    parser.add_argument("name")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    args = parser.parse_args(argv)
    print(registry_text(args.name, args.tracking_uri))


def main_promote(argv: list[str]) -> None:
    from continual.cmdline import subcommand_parser

    parser = subcommand_parser("promote", PROMOTE_USAGE)
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    args = parser.parse_args(argv)
    previous = promote(args.name, args.version, args.alias, args.tracking_uri)
    was = f" (was version {previous})" if previous else ""
    print(f"{args.name}@{args.alias} -> version {int(args.version)}{was}")
