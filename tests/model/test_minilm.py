"""Slow: the README's default experiment with the packaged pretrained MiniLM (run with ``pytest -m slow``)."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_default_experiment_learns_the_demo_stream(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "continual",
            "progress=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("continual").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["avg_acc"] > 0.85  # chance is 0.2; measured 0.97
    assert run.data.metrics["bwt"] == 0.0
    assert run.data.params["backbone.name"] == "packaged:all-MiniLM-L6-v2"
