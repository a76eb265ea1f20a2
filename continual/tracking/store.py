"""Where MLflow data lives: store URIs, a fresh sqlite store made safely, clients of existing stores, a server.

Local sqlite stores (the default) get their artifacts in ``mlartifacts/`` next to the database, so
``runs/`` holds the whole record and ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``
shows artifacts without a server.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from continual.errors import ContinualError, first_line

DEFAULT_URI = "sqlite:///runs/mlflow.db"  # conf/tracking/sqlite.yaml; relative to the launch directory
# The UI opens an experiment on the view its kind names; without the tag, MLflow 3 shows the GenAI views.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17 opens an experiment's training view (runs, metric charts) for this URL query; the choice is then
# kept in the browser's localStorage
TRAINING_VIEW = "workflowType=machine_learning"


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


def experiment_id(client: Any, name: str) -> str:
    """The experiment's id, creating it if needed (tolerating a parallel job that creates it first).

    The experiment is tagged as model training (:data:`EXPERIMENT_KIND`), so that the UI opens on
    its runs; an experiment made before that tag existed gets it now.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(
                name, artifact_location=local_artifact_root(client.tracking_uri), tags=dict([EXPERIMENT_KIND])
            )
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return found.experiment_id


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI's training view: on its server, or where ``mlflow ui`` serves a local store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"
