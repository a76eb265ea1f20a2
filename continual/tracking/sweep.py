"""A multirun's parent run: created by the launching process before any job starts (which also creates a
fresh sqlite store and the experiment in one process), recorded in the sweep folder, closed last."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from continual.tracking.mlflow import MLflowTracker

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
