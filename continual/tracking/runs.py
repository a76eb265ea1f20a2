"""Reading logged runs back: the finished runs of an experiment and their metric histories, as plain data.

This is what ``continual report`` aggregates; it never writes. Runs come back as :class:`LoggedRun`
(tags, params, each metric's latest value), so the aggregation knows nothing of MLflow's classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual.errors import ContinualError, first_line
from continual.tracking.store import open_store

PAGE = 1000  # runs per search request


@dataclass(frozen=True)
class LoggedRun:
    """One logged run: its status, tags, params and each metric's latest value (the value at its last step)."""

    run_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


class RunStore:
    """The runs of one MLflow store (``uri``, or an already open MLflow ``client``)."""

    def __init__(self, uri_or_client: Any, launch_dir: Path | None = None) -> None:
        is_uri = isinstance(uri_or_client, str)
        self.client = open_store(uri_or_client, launch_dir) if is_uri else uri_or_client

    @property
    def uri(self) -> str:
        return str(self.client.tracking_uri)

    def experiment_runs(self, experiment: str, filters: Sequence[str] = ()) -> list[LoggedRun]:
        """Every run of ``experiment`` that matches the MLflow search ``filters`` (joined by ``and``); one line
        if the store cannot be read, the experiment does not exist or a filter is malformed."""
        try:
            found = self.client.get_experiment_by_name(experiment)
            names = sorted(e.name for e in self.client.search_experiments()) if found is None else []
        except Exception as exc:  # MlflowException, sqlalchemy errors: a store that cannot be read
            raise ContinualError(f"cannot read the MLflow store {self.uri}: {first_line(exc)}") from exc
        if found is None:
            raise ContinualError(f"no experiment named '{experiment}'; experiments: {', '.join(names) or '(none)'}")
        runs: list[LoggedRun] = []
        token = None
        try:
            while True:
                page = self.client.search_runs(
                    [found.experiment_id], " and ".join(filters), max_results=PAGE, page_token=token
                )
                runs.extend(_logged(run) for run in page)
                token = page.token
                if not token:
                    return runs
        except Exception as exc:  # MlflowException: a malformed filter
            raise ContinualError(f"cannot search runs of '{experiment}': {first_line(exc)}") from exc

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every ``(step, value)`` logged for metric ``key`` of run ``run_id``, in the order logged."""
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]


def _logged(run: Any) -> LoggedRun:
    data = run.data
    return LoggedRun(run.info.run_id, run.info.status, dict(data.tags), dict(data.params), dict(data.metrics))
