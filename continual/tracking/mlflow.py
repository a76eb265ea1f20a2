"""MLflow tracker: one MLflow run per experiment run, talking to any tracking URI (see :mod:`.store`)."""

from __future__ import annotations

import functools
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from continual.errors import ContinualError, first_line
from continual.tracking.base import DataInput, flatten, metric_key
from continual.tracking.store import check_server, ensure_sqlite_store, experiment_id, normalise_uri, run_page

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
BATCH = 100  # log_batch takes at most 100 params / 1000 metrics per call


def _retry_on_race(call: Callable[[], object], attempts: int = 5) -> None:
    """Run an idempotent MLflow write again when a parallel job inserted the same row first.

    MLflow's SQL store looks a dataset up and inserts it if missing in one transaction, so two jobs of
    a sweep logging the same data at once can both miss it; the loser's transaction is rolled back
    (UNIQUE constraint failed) and a second attempt finds the row the winner wrote.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            call()
            return
        except MlflowException as exc:
            message = str(exc).lower()  # sqlite, PostgreSQL and MySQL word it differently
            race = any(word in message for word in ("unique constraint", "integrityerror", "duplicate"))
            if not race or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


FOLDER_TAG, HOST_TAG = "continual.folder", "continual.host"  # which run folder an MLflow run belongs to


def identity(folder: Path) -> dict[str, str]:
    """The tags that tie an MLflow run to its run folder: the folder's absolute path and the host it is on."""
    return {FOLDER_TAG: str(folder.resolve()), HOST_TAG: socket.gethostname()}


class MLflowTracker:
    """Creates (or reuses) experiment ``experiment`` at ``uri`` and starts a run in it.

    With ``run_id`` it reopens that run instead (resuming a killed run) and marks it RUNNING again.
    An MLflow run belongs to the run ``folder`` it was made for (:func:`identity`, as tags): a copy or a
    move of that folder holds the same ``run_id`` but may not reopen the run, and a FINISHED run is never
    written again.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        launch_dir: Path | None = None,
        run_id: str | None = None,
        folder: Path | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        mine = identity(folder) if folder is not None else {}
        try:
            self.uri = normalise_uri(uri, launch_dir or Path.cwd())
            if self.uri.startswith(("http://", "https://")):
                check_server(self.uri)
            ensure_sqlite_store(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = experiment_id(self.client, experiment)
            found = self.client.get_run(run_id) if run_id is not None else None
        except Exception as exc:
            raise ContinualError(f"tracking.uri={uri}: cannot open the MLflow store: {first_line(exc)}") from exc
        if found is None:
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={**(tags or {}), **mine}
            ).info.run_id
            return
        self.run_id = found.info.run_id
        self._check_owner(found, folder, mine)
        for key, value in mine.items():  # a run made before runs knew their folder adopts this one
            self.client.set_tag(self.run_id, key, value)
        self.client.update_run(self.run_id, status="RUNNING")

    def _check_owner(self, found: Any, folder: Path | None, mine: Mapping[str, str]) -> None:
        """Only the folder a run was made for reopens it, and only while it is not FINISHED."""
        if found.info.status == "FINISHED":
            raise ContinualError(
                f"MLflow run {self.run_id} is FINISHED: nothing more is written to it"
                + (
                    f" ({folder} holds a copy of a finished run? learn more tasks with `continual extend`)"
                    if folder
                    else ""
                )
            )
        recorded = {key: found.data.tags.get(key) for key in mine}
        if folder is not None and recorded[FOLDER_TAG] is not None and recorded != mine:
            where = recorded[FOLDER_TAG] + (f" on {recorded[HOST_TAG]}" if recorded[HOST_TAG] != mine[HOST_TAG] else "")
            raise ContinualError(
                f"{folder} is a copy or a move of {where}, whose MLflow run {self.run_id} it names: resume the "
                f"original, or continue this folder in a new MLflow run with `continual resume {folder} --new-run`"
            )

    @property
    def page(self) -> str:
        """The run's page in the MLflow UI (its training view, where the per-task accuracy charts are)."""
        return run_page(self.uri, self.experiment_id, self.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_history([(metrics, step)])

    def log_history(self, rows: Sequence[tuple[Mapping[str, float], int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(metric_key(k), float(v), now, step)
            for metrics, step in rows
            for k, v in metrics.items()
            if math.isfinite(v)
        ]
        for start in range(0, len(items), 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + 10 * BATCH])

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, metric_key(key))}

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_inputs(self, inputs: Sequence[DataInput]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [
            DatasetInput(
                Dataset(
                    data.name,
                    data.digest,
                    "hugging_face" if data.source.startswith("hf://") else "local",
                    json.dumps({"uri": data.source}),
                    profile=json.dumps({"num_rows": data.rows, "num_labels": data.labels}),
                ),
                [InputTag("mlflow.data.context", data.context)],
            )
            for data in inputs
        ]
        for start in range(0, len(datasets), BATCH):
            batch = datasets[start : start + BATCH]
            _retry_on_race(functools.partial(self.client.log_inputs, self.run_id, datasets=batch))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
