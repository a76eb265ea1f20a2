"""The registry door: model versions, aliases and their history in MLflow's model registry.

Everything here speaks MLflow; what a version holds (a bank: config, adapters, router state,
calibration) is :mod:`continual.serving.registry`'s business. Model names and aliases are checked
before any store is touched, so a bad one is one line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual.errors import ContinualError, first_line
from continual.tracking.store import DEFAULT_URI, open_store

MODEL_ARTIFACT = "model"  # the run's artifact folder that holds its registered pyfunc model
HISTORY_EXPERIMENT = "continual-registry"  # one small run per alias move
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


def check_model_name(name: Any, where: str = "tracking.register") -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise ContinualError(
            f"{where}={name!r}: a registered model name is 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def _client(uri: str) -> Any:
    return open_store(uri, Path.cwd())


def publish(uri: str, run_id: str, name: str, model_dir: Path, tags: Mapping[str, str]) -> str:
    """Attach the pyfunc model folder to run ``run_id`` and register it as a new version of ``name``, tagged
    with ``tags``; the version. A run that already registered one gets that one back (a resumed run)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return str(version.version)  # registered before a kill: a resumed run does not register twice
    client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:  # made by an earlier run (or a parallel job of the sweep)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags))
    client.set_tag(run_id, "registered_version", f"{name}/{version.version}")
    return str(version.version)


@dataclass(frozen=True)
class Version:
    """One registered version, as ``continual registry`` lists it."""

    version: int
    created: float  # seconds since the epoch
    tags: dict[str, str]
    aliases: list[str]
    run_id: str


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


def resolve_version(uri: str, ref: str) -> Version:
    """The version a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names (one line if none)."""
    model = MODEL_URI.match(ref)
    if model is None:
        raise ContinualError(f"{ref} is not a model version: give models:/NAME/VERSION or models:/NAME@alias")
    found = _model_version(_client(uri), model["name"], model["version"] or f"@{model['alias']}")
    return Version(
        int(found.version), found.creation_timestamp / 1000, dict(found.tags), list(found.aliases), found.run_id
    )


def promote(name: str, version: str, alias: str = "champion", uri: str = DEFAULT_URI) -> str | None:
    """Point ``alias`` at ``version`` of ``name`` and record the move; the version it pointed at before, if any."""
    from mlflow.exceptions import MlflowException

    if not ALIAS.match(alias) or alias.lower() == "latest" or re.match(r"^v\d+$", alias):
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


def download(uri: str, ref: str, paths: tuple[str, ...], scratch: Path) -> Path:
    """Artifacts of a registered version (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``: its bank) or of a
    run id / ``runs:/<id>`` (``paths``) into ``scratch``; the local folder that holds them."""
    client = _client(uri)
    model = MODEL_URI.match(ref)
    if model:
        found = _model_version(client, model["name"], model["version"] or f"@{model['alias']}")
        return _download(client, found.run_id, f"{MODEL_ARTIFACT}/artifacts/bank", scratch, ref)
    run_id = run_id_of(ref)
    for path in paths:
        _download(client, run_id, path, scratch, ref)
    return scratch


def run_id_of(ref: str) -> str:
    """The run id of ``<id>`` or ``runs:/<id>`` ('' if ``ref`` is neither)."""
    run_id = ref[len("runs:/") :].strip("/") if ref.startswith("runs:/") else ref
    return run_id if len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id) else ""


def _download(client: Any, run_id: str, path: str, scratch: Path, ref: str) -> Path:
    try:
        return Path(client.download_artifacts(run_id, path, str(scratch)))
    except Exception as exc:  # MlflowException / OSError: missing run, artifact or store
        raise ContinualError(f"{ref}: cannot fetch {path} from {client.tracking_uri}: {first_line(exc)}") from exc
