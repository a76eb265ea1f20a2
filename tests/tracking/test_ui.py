"""Slow end-to-end checks of the tracking set-up: the MLflow UI in headless Chromium, and PostgreSQL.

    python -m pytest -m slow tests/test_ui.py

Needs the Debian packages chromium + chromium-driver and ``pip install -e ".[browser]"`` for the
browser test, the Debian package postgresql and ``pip install -e ".[postgres]"`` for the PostgreSQL
test; each is skipped, saying why, where its parts are missing. The browser test keeps screenshots
in runs/test-artifacts/.
"""

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from continual.tracking.store import free_port as _free_port
from continual.tracking.store import serve

from conftest import cli, stream_yaml, tiny_overrides, write_jsonl

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1600,1200",
)


def _serve(store_uri: str, artifacts: Path) -> tuple[subprocess.Popen, str]:
    return serve(store_uri, artifacts)


def _three_task_run(tmp_path, tiny_model_dir, demo_files, uri):
    from continual.streams.demo_data import demo_examples

    files = dict(demo_files)
    files["cooking"] = {
        split: write_jsonl(
            tmp_path / "data" / "cooking" / f"{split}.jsonl",
            [{"text": t, "label": lab} for t, lab in demo_examples("cooking", split)],
        )
        for split in ("train", "test")
    }
    conf = stream_yaml(tmp_path / "my_conf", files, max_per_class=10)
    proc = cli(
        tmp_path,
        "--config-dir",
        conf,
        "stream=two_tasks",
        *tiny_overrides(tmp_path, tiny_model_dir),
        f"tracking.uri={uri}",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("continual")
    (run,) = client.search_runs([experiment.experiment_id])
    return experiment.experiment_id, run.info.run_id


@pytest.mark.skipif(importlib.util.find_spec("selenium") is None, reason='pip install -e ".[browser]"')
@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="apt install chromium chromium-driver",
)
def test_forgetting_curves_and_matrix_in_the_mlflow_ui(tmp_path, tiny_model_dir, demo_files):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    server, uri = _serve(f"sqlite:///{tmp_path}/ui.db", tmp_path / "artifacts")
    try:
        experiment_id, run_id = _three_task_run(tmp_path, tiny_model_dir, demo_files, uri)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        try:
            driver.get(f"{uri}/#/experiments/{experiment_id}/runs/{run_id}")
            WebDriverWait(driver, 60).until(lambda d: "acc/cooking" in d.page_source)
            page = driver.page_source
            driver.save_screenshot(str(SCREENSHOTS / "mlflow_run_overview.png"))
            for name in ("acc/banking", "acc/travel", "acc/cooking", "avg_acc", "bwt"):
                assert name in page
            driver.get(f"{uri}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
            WebDriverWait(driver, 60).until(lambda d: "accuracy_matrix.csv" in d.page_source)
            driver.save_screenshot(str(SCREENSHOTS / "mlflow_run_artifacts.png"))
            assert "accuracy_matrix.png" in driver.page_source and "router_confusion.csv" in driver.page_source
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (SCREENSHOTS / "mlflow_run_overview.png").stat().st_size > 10_000


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason='pip install -e ".[postgres]"')
@pytest.mark.skipif(_pg_bin() is None, reason="apt install postgresql")
def test_tracking_server_on_postgresql(tmp_path, tiny_model_dir, demo_files):
    pg, port = _pg_bin(), _free_port()
    home = Path(tempfile.mkdtemp(prefix="continual-pg-"))  # outside pytest's private tmp: postgres must reach it
    data = home / "pgdata"
    run_as = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]  # initdb refuses to run as root
    data.mkdir()
    if run_as:
        os.chmod(home, 0o755)
        shutil.chown(data, "postgres")
    subprocess.run(
        [*run_as, str(pg / "initdb"), "-D", str(data), "-U", "continual", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(pg / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            f"-p {port} -k {data} -c listen_addresses=''",
            "-l",
            str(data / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(pg / "createdb"), "-h", str(data), "-p", str(port), "-U", "continual", "mlflow"],
            check=True,
            capture_output=True,
        )
        server, uri = _serve(f"postgresql://continual@/mlflow?host={data}&port={port}", tmp_path / "artifacts")
        try:
            _, run_id = _three_task_run(tmp_path, tiny_model_dir, demo_files, uri)
            run = MlflowClient(tracking_uri=uri).get_run(run_id)
            assert run.info.status == "FINISHED" and "acc/cooking" in run.data.metrics
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        subprocess.run([*run_as, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
