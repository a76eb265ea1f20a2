"""MLflow tracker: one MLflow run per experiment run, talking to any tracking URI.

Local sqlite stores (the default) get their artifacts in ``mlartifacts/`` next to the database, so
``runs/`` holds the whole record and ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``
shows artifacts without a server.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from continual.errors import ContinualError, first_line
from continual.tracking.base import DataInput, flatten, metric_key

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
DEFAULT_URI = "sqlite:///runs/mlflow.db"  # conf/tracking/sqlite.yaml; relative to the launch directory
MODEL_ARTIFACT = "model"  # the run's artifact folder that holds its registered pyfunc model
BATCH = 100  # log_batch takes at most 100 params / 1000 metrics per call
# The UI opens an experiment on the view its kind names; without the tag, MLflow 3 shows the GenAI views.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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


def normalise_uri(uri: str, launch_dir: Path) -> str:
    """Make relative sqlite/file URIs absolute (Hydra jobs may run elsewhere) and create their folder."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else launch_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri:  # a bare folder: MLflow's file store
        path = Path(uri) if Path(uri).is_absolute() else launch_dir / uri
        return path.as_uri()
    return uri


def ensure_sqlite_store(uri: str) -> None:
    """Create a new sqlite store atomically: build the schema in a private file, then link it into place.

    MLflow builds a fresh store's schema in several migration steps; a process killed half-way, or two
    processes creating the same new store at once, leave a database that no later run can open. A
    hard link either publishes a complete store or fails because another process already did.
    """
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if path.exists():
        return
    from mlflow.tracking import MlflowClient

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # runs the migrations
        with contextlib.suppress(FileExistsError):  # another process published its store first: use that one
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def local_artifact_root(uri: str) -> str | None:
    """Artifacts of a local sqlite store live beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds when a tracking server does not answer, instead of after MLflow's long retries."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:
            if reply.status != 200:
                raise OSError(f"/health answered HTTP {reply.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise OSError(f"no MLflow server answers at {uri} ({exc})") from exc


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(store_uri: str, artifacts: Path, workers: int = 1, timeout: float = 90.0) -> tuple[Any, str]:
    """Start ``mlflow server`` on a free loopback port and wait until it answers ``/health``.

    Returns the server process (terminate it when done) and its URI. For tests and benchmarks; for
    a shared server see ``scripts/mlflow_server.sh``.
    """
    import subprocess
    import sys

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        store_uri,
        "--artifacts-destination",
        str(artifacts),
    ]
    env = {**os.environ, "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            check_server(uri, timeout=2)
            return server, uri
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.terminate()
                raise RuntimeError(f"mlflow server for {store_uri} did not start within {timeout:.0f} s") from None
            time.sleep(0.5)


def open_store(uri: str, launch_dir: Path | None = None) -> Any:
    """An MLflow client for an existing store (reading, never creating): a relative sqlite path resolves
    against ``launch_dir`` and must exist, a server must answer within seconds."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path = path if path.is_absolute() else (launch_dir or Path.cwd()) / path
        if not path.is_file():  # MLflow would silently create an empty store here
            raise ContinualError(f"no MLflow store at {path} (give the store with --tracking-uri)")
        uri = f"sqlite:///{path}"
    try:
        if uri.startswith(("http://", "https://")):
            check_server(uri)
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise ContinualError(f"cannot open the MLflow store {uri}: {first_line(exc)}") from exc


class MLflowTracker:
    """Creates (or reuses) experiment ``experiment`` at ``uri`` and starts a run in it.

    With ``run_id`` it reopens that run instead (resuming a killed run) and marks it RUNNING again.
    With ``register``, the finished run's bank becomes a new version of that registered model.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        launch_dir: Path | None = None,
        run_id: str | None = None,
        register: str | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.register = register
        for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            self.uri = normalise_uri(uri, launch_dir or Path.cwd())
            if self.uri.startswith(("http://", "https://")):
                check_server(self.uri)
            ensure_sqlite_store(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = self._experiment_id(experiment)
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            else:
                self.run_id = self.client.create_run(
                    experiment_id, run_name=run_name, tags=dict(tags or {})
                ).info.run_id
        except Exception as exc:
            raise ContinualError(f"tracking.uri={uri}: cannot open the MLflow store: {first_line(exc)}") from exc
        self.experiment_id = experiment_id

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, creating it if needed (tolerating a parallel job that creates it first).

        The experiment is tagged as model training (:data:`EXPERIMENT_KIND`), so that the UI opens on
        its runs; an experiment made before that tag existed gets it now.
        """
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(
                    name, artifact_location=local_artifact_root(self.uri), tags=dict([EXPERIMENT_KIND])
                )
            except MlflowException:
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id

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

    def publish(self, model_dir: Path, tags: Mapping[str, str]) -> str:
        from mlflow.exceptions import MlflowException

        assert self.register, "publish needs a registered model name (tracking.register)"
        for version in self.client.search_model_versions(f"name = '{self.register}' and run_id = '{self.run_id}'"):
            return str(version.version)  # registered before a kill: a resumed run does not register twice
        self.client.log_artifacts(self.run_id, str(model_dir), MODEL_ARTIFACT)
        try:
            self.client.create_registered_model(self.register)
        except MlflowException as exc:  # made by an earlier run (or a parallel job of the sweep)
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"runs:/{self.run_id}/{MODEL_ARTIFACT}"
        version = self.client.create_model_version(self.register, source, run_id=self.run_id, tags=dict(tags))
        self.client.set_tag(self.run_id, "registered_version", f"{self.register}/{version.version}")
        return str(version.version)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


# A multirun's parent run: created by the launching process before any job starts (which also creates
# a fresh sqlite store and the experiment in one process), recorded in the sweep folder, closed last.
SWEEP_FILE = "sweep_run.json"


def record_sweep(sweep_dir: Path, tracker: MLflowTracker, jobs: int | None = None) -> dict:
    """Write ``sweep_run.json`` in ``sweep_dir``: the parent run that the sweep's jobs join as children, and how
    many jobs it plans (a job that never started keeps a resumed sweep from closing as FINISHED)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": tracker.run_id, "uri": tracker.uri, "started": time.time(), "jobs": jobs}
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(record))
    return record


def sweep_of(job_dir: Path) -> dict | None:
    """The parent run record of the multirun that ``job_dir`` (a job's folder) belongs to, if any."""
    path = job_dir.parent / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def child_tags(job_dir: Path, job: int) -> dict[str, str]:
    """Tags that make a job's run a child of its sweep's parent run (none outside a multirun)."""
    record = sweep_of(job_dir)
    if record is None:
        return {}
    return {"mlflow.parentRunId": record["run_id"], "sweep": str(job_dir.parent), "job": str(job)}


def _reap(client: Any, run: Any, job_dir: Path) -> None:
    """A job whose process was killed before it could end its run: attach its log, mark it KILLED."""
    for log_file in job_dir.glob("*.log"):
        client.log_artifact(run.info.run_id, str(log_file))
    client.set_terminated(run.info.run_id, "KILLED")


def close_sweep(
    sweep_dir: Path, killed: bool = False, only_if_done: bool = False, reap: bool = False
) -> tuple[int, int] | None:
    """End a sweep's parent run with its job counts: FINISHED if every job finished, KILLED if ``killed``, else
    FAILED; with ``only_if_done``, only if every job finished (a resumed job closing its sweep). With ``reap``
    (the jobs were local processes that died with the launcher), job runs still RUNNING are marked KILLED,
    with their log attached: their folders stay resumable.

    Returns (jobs, finished jobs), or None when ``sweep_dir`` has no parent run.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    record = sweep_of(sweep_dir / "_")
    if record is None:
        return None
    # this sweep's job folders (a reused sweep folder may also hold an earlier sweep's jobs)
    started = sum(
        1
        for d in sweep_dir.iterdir()
        if (d / ".hydra").is_dir() and (d / ".hydra").stat().st_mtime >= record["started"] - 1
    )
    jobs = max(started, record.get("jobs") or 0)
    client = MlflowClient(tracking_uri=record["uri"])
    parent = client.get_run(record["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{record['run_id']}'"
    )
    finished = sum(c.info.status == "FINISHED" for c in children)
    if reap:
        for child in (c for c in children if c.info.status == "RUNNING"):
            _reap(client, child, sweep_dir / child.data.tags.get("job", "?"))
    done = jobs > 0 and finished == jobs
    if only_if_done and not done:
        return jobs, finished
    now = int(time.time() * 1000)
    client.log_batch(
        record["run_id"], metrics=[Metric("jobs", jobs, now, 0), Metric("jobs_finished", finished, now, 0)]
    )
    client.set_terminated(record["run_id"], "KILLED" if killed else "FINISHED" if done else "FAILED")
    return jobs, finished
