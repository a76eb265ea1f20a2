"""Slow end-to-end checks of the tracking set-up: the MLflow UI in headless Chromium, and PostgreSQL.

    python -m pytest -m slow tests/tracking/test_ui.py

Needs the Debian packages chromium + chromium-driver and ``pip install -e ".[browser]"`` for the
browser test, the Debian package postgresql and ``pip install -e ".[postgres]"`` for the PostgreSQL
test; each is skipped, saying why, where its parts are missing. The browser test keeps screenshots
in docs/assets/ (the UI page of the docs) and runs/test-artifacts/.
"""

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from continual.tracking.store import free_port as _free_port
from continual.tracking.store import run_page, serve

from conftest import cli, stream_yaml, tiny_overrides, write_jsonl

pytestmark = pytest.mark.slow
SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"
DOCS_ASSETS = Path(__file__).resolve().parents[2] / "docs" / "assets"  # what docs/ui.md shows
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
    """The link a run's summary prints opens MLflow's training view; the per-task charts and artifacts are there.

    Saves the screenshots the UI page of the docs shows (docs/assets/ui-*.png) and copies in runs/test-artifacts/.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server, uri = _serve(f"sqlite:///{tmp_path}/ui.db", tmp_path / "artifacts")
    try:
        experiment_id, run_id = _three_task_run(tmp_path, tiny_model_dir, demo_files, uri)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            shots = _screenshots(driver, run_page(uri, experiment_id, run_id))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for shot in shots:
        assert shot.stat().st_size > 10_000
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOTS / shot.name)


def _screenshots(driver, page: str) -> list[Path]:
    """Overview (parameters, metrics), the metric charts (one per key), the artifacts: each found, then shot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shot(name: str, url: str, *expected: str, open_file: str = "") -> Path:
        driver.get(url)
        WebDriverWait(driver, 90).until(lambda d: all(text in d.page_source for text in expected))
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            if close.is_displayed():  # MLflow's Assistant panel, which covers a third of the page
                close.click()
        if open_file:  # its preview beside the list
            driver.find_element(By.XPATH, f"//*[text()='{open_file}']").click()
        time.sleep(3)  # the charts draw after their titles are in the page
        path = DOCS_ASSETS / f"ui-{name}.png"
        driver.save_screenshot(str(path))
        return path

    assert "?workflowType=machine_learning" in page
    base, query = page.split("?")
    return [
        shot("run-overview", page, "acc/cooking", "avg_acc", "bwt"),
        # one chart per task under "acc"; the charts further down (avg_acc, bwt) are drawn when scrolled to
        shot("metric-charts", f"{base}/model-metrics?{query}", "acc/banking", "acc/travel", "acc/cooking"),
        shot(
            "artifacts",
            f"{base}/artifacts?{query}",
            "accuracy_matrix.png",
            "router_confusion.csv",
            open_file="accuracy_matrix.png",
        ),
    ]


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
