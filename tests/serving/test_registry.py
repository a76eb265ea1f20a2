"""Registered banks: every run with tracking.register is a model version; registry, promote, pyfunc, predict,
extend and compare on versions; data lineage on the run page. The real HTTP server is in the slow set."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from continual.errors import ContinualError

from conftest import (
    compose,
    demo_task_files,
    main_in_process,
    one_error_line,
    run_in_process,
    stream_yaml,
    tiny_overrides,
    write_jsonl,
)

MIXED = ["i lost my card yesterday", "book a hotel in rome", "how much is the loan rate"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_model_dir):
    """Version 1: a run on (banking, travel); version 2: version 1 extended by cooking. Returns (root, uri)."""
    root = tmp_path_factory.mktemp("registry")
    conf = stream_yaml(root / "conf", demo_task_files(root, ("banking", "travel")), max_per_class=10)
    stream_yaml(conf, demo_task_files(root, ("cooking",)), name="more", max_per_class=10)
    overrides = tiny_overrides(root, tiny_model_dir, "router=prototype", "tracking.register=bank")
    run_in_process(root / "first", ["stream=two_tasks", *overrides], config_dir=conf, launch_dir=root)
    from continual.commands.cli import plain
    from continual.commands.extend import extend_job
    from continual.serving.registry import fetch_bank

    uri = f"sqlite:///{root}/mlflow.db"
    source = fetch_bank("models:/bank/1", uri, root / "fetched", "test")  # extending a version, not the folder
    more = plain(compose(["stream=more"], conf).stream)
    extend_job(source, more, [], root / "second", root, "models:/bank/1")
    return root, uri


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_every_run_and_extension_is_a_version_tagged_with_its_tasks_and_acc(registered):
    root, uri = registered
    versions = sorted(_client(uri).search_model_versions("name = 'bank'"), key=lambda v: int(v.version))
    assert [v.tags["tasks"] for v in versions] == ["banking,travel", "banking,travel,cooking"]
    second = _client(uri).get_run(versions[1].run_id).data.tags
    assert second["extends"] == versions[0].run_id and second["extends_source"] == "models:/bank/1"
    results = json.loads((root / "second" / "results.json").read_text())
    assert float(versions[1].tags["avg_acc"]) == pytest.approx(results["avg_acc"], abs=1e-4)
    model = Path(_client(uri).download_artifacts(versions[0].run_id, "model"))
    bank = model / "artifacts" / "bank"
    assert {p.name for p in bank.iterdir()} >= {
        "config.yaml",
        "adapters",
        "router.safetensors",
        "calibration.safetensors",
    }
    weights = [p for p in model.rglob("*") if p.suffix in (".safetensors", ".bin") and "adapters" not in p.parts]
    assert {p.name for p in weights} == {"router.safetensors", "calibration.safetensors"}  # no backbone copy


def test_the_run_page_lists_every_split_it_learned_from(registered):
    root, uri = registered
    run_id = json.loads((root / "first" / "checkpoint.json").read_text())["run_id"]
    inputs = _client(uri).get_run(run_id).inputs.dataset_inputs
    names = {(d.dataset.name, d.tags[0].value) for d in inputs}
    assert ("banking/train", "train") in names and ("travel/test", "test") in names
    (train,) = [d.dataset for d in inputs if d.dataset.name == "banking/train"]
    assert json.loads(train.source)["uri"] == str(root / "data" / "banking" / "train.jsonl") and len(train.digest) == 12


def test_pyfunc_load_answers_mixed_tasks_with_params_and_rejects_bad_ones(registered):
    import mlflow
    from mlflow.exceptions import MlflowException

    _, uri = registered
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/bank/2")
    out = model.predict(MIXED)
    assert len(out) == 3 and set(out[0]) >= {"task", "label", "confidence", "scores"}
    assert set(out[0]["scores"]) == {"banking", "travel", "cooking"}
    given = model.predict(MIXED, params={"task": "cooking"})
    assert {r["task"] for r in given} == {"cooking"} and not any(r["routed"] for r in given)
    everything = model.predict(MIXED + ["zebra quantum"], params={"accept_rate": 1.0})
    strict = model.predict(MIXED + ["zebra quantum"], params={"accept_rate": 0.01})
    assert sum(r["abstained"] for r in strict) >= sum(r["abstained"] for r in everything)
    with pytest.raises(MlflowException, match=r"tasks \['fishing'\] are not tasks of this run"):
        model.predict(MIXED, params={"task": "fishing"})
    with pytest.raises(MlflowException, match=r"accept_rate .* must be a number in \(0, 1\], got 3.0"):
        model.predict(MIXED, params={"accept_rate": 3.0})
    hub = model.predict(MIXED[:1], params={"all_tasks": True})  # every task's answer per text
    assert set(hub[0]["tasks"]) == {"banking", "travel", "cooking"} and set(hub[0]["routes"]) == {"sequence"}
    with pytest.raises(MlflowException, match="param type must be one of"):
        model.predict(MIXED, params={"type": "spans"})
    with pytest.raises(MlflowException, match="this run has no task of that type"):
        model.predict(MIXED, params={"type": "tokens"})
    for bad, said in ((["fine", 3, None], "text 1 of the request is a number"), ([MIXED, MIXED], "is a list (nested)")):
        with pytest.raises(MlflowException, match=re.escape(said)):  # as raw as a client sent it, not cast to text
            model.predict(bad)
    from mlflow.pyfunc import scoring_server

    with pytest.raises(MlflowException) as raised:  # the server's own handler: it rewrites messages to quote the data
        scoring_server.invocations(json.dumps({"inputs": ["x" * 100_000]}), "application/json", model, None)
    body = raised.value.serialize_as_json()
    assert raised.value.get_http_status_code() == 400 and "xxxx" not in body and len(body) < 300, body[:300]


def test_promote_moves_the_alias_records_each_move_and_rolls_back(registered, monkeypatch, capsys):
    _, uri = registered
    for version, was in (("2", ""), ("1", " (was version 2)")):
        proc = main_in_process(monkeypatch, capsys, "promote", "bank", version, "--tracking-uri", uri)
        assert proc.returncode == 0 and proc.stdout.strip() == f"bank@champion -> version {version}{was}"
    listing = main_in_process(monkeypatch, capsys, "registry", "bank", "--tracking-uri", uri).stdout
    lines = listing.splitlines()
    assert lines[0] == "model bank: 2 versions" and "champion" in lines[2] and "champion" not in lines[3]
    assert listing.rstrip().endswith("champion -> v1 (was v2)") and "champion -> v2\n" in listing

    proc = main_in_process(
        monkeypatch,
        capsys,
        "predict",
        "models:/bank@champion",
        "--tracking-uri",
        uri,
        *(a for t in MIXED for a in ("--text", t)),
        "--no-progress",
    )
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(records) == 3
    assert all(r["scores"] is None or set(r["scores"]) == {"banking", "travel"} for r in records)  # v1: no cooking


@pytest.mark.parametrize(
    "args, message",
    [
        (("registry", "nobody"), "no registered model 'nobody'"),
        (("promote", "bank", "9"), "models:/bank/9: no such registered model version"),
        (("promote", "bank", "1", "--alias", "latest"), "--alias 'latest'"),
        (("predict", "models:/bank@nobody", "--text", "hi"), "models:/bank/@nobody: no such registered model version"),
        (("predict", "models:/bank/1", "--text", "hi", "--task", "fishing"), "tasks ['fishing'] are not tasks"),
    ],
)
def test_registry_mistakes_are_one_line(registered, monkeypatch, capsys, args, message):
    _, uri = registered
    proc = main_in_process(monkeypatch, capsys, *args, "--tracking-uri", uri)
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert message in line, line


def test_a_bad_model_name_is_refused_before_any_work(tmp_path, tiny_model_dir):
    with pytest.raises(ContinualError, match=r"tracking.register='no way!': a registered model name"):
        run_in_process(tmp_path / "run", tiny_overrides(tmp_path, tiny_model_dir, "tracking.register='no way!'"))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_resumed_run_does_not_register_twice(registered, tmp_path):
    from continual.tracking import registry

    root, uri = registered
    run_id = json.loads((root / "first" / "checkpoint.json").read_text())["run_id"]
    (tmp_path / "model").mkdir()
    assert registry.publish(uri, run_id, "bank", tmp_path / "model", {}) == "1"
    assert len(_client(uri).search_model_versions("name = 'bank'")) == 2


def _compare(monkeypatch, capsys, uri, labelled, *extra):
    versions = ("models:/bank/1", "models:/bank/2")
    return main_in_process(
        monkeypatch, capsys, "compare", *versions, "--input", labelled, "--tracking-uri", uri, *extra
    )


def test_compare_scores_two_versions_on_the_same_texts_and_logs_it(registered, tmp_path, monkeypatch, capsys):
    from continual.streams.demo_data import demo_examples

    root, uri = registered
    rows = [
        {"text": t, "task": task, "label": lab}
        for task in ("banking", "cooking")
        for t, lab in demo_examples(task, "test")[:6]
    ]
    labelled = write_jsonl(tmp_path / "labelled.jsonl", rows)
    proc = _compare(monkeypatch, capsys, uri, labelled, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cooking = next(line for line in proc.stdout.splitlines() if line.startswith("| cooking |"))
    assert cooking.split("|")[3].strip() == "not learned" and cooking.split("|")[5].strip() == "not learned"  # v1
    assert "A never learned cooking: their texts count as wrong in its 'all' row" in proc.stdout
    assert (tmp_path / "out" / "comparison.md").is_file()
    (logged,) = _client(uri).search_runs([_client(uri).get_experiment_by_name("continual-compare").experiment_id])
    assert "a/router_acc/cooking" not in logged.data.metrics and "b/acc/cooking" in logged.data.metrics
    for row, said in (
        ({"task": "fishing", "label": "x"}, "task 'fishing' is a task of neither bank"),
        ({"task": "banking", "label": "x"}, "label 'x' is not a label of task banking in either bank"),
    ):
        write_jsonl(tmp_path / "typo.jsonl", [{"text": "hello", **row}])
        assert said in one_error_line(_compare(monkeypatch, capsys, uri, tmp_path / "typo.jsonl"))

    write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello", "task": "banking"}])
    proc = _compare(monkeypatch, capsys, uri, tmp_path / "bad.jsonl")
    assert proc.returncode == 2 and "field 'label' is missing or empty" in proc.stderr


def _serve(uri: str, model: str, port: int) -> subprocess.Popen:
    """`continual serve`, started by the venv's python with its bin/ *not* on PATH (the wrapper puts it there)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir)
    env = {**os.environ, "PATH": path, "CONTINUAL_MAX_TEXTS": "64"}
    cmd = [sys.executable, "-m", "continual", "serve", model, "--port", str(port), "--tracking-uri", uri]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _ask(port: int, body: dict, timeout: float = 120.0) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_mlflow_models_serve_answers_mixed_requests_and_a_rollback_forgets_the_newer_task(
    registered, monkeypatch, capsys
):
    from continual.tracking.store import free_port

    _, uri = registered
    for version in ("2", "1"):
        assert main_in_process(monkeypatch, capsys, "promote", "bank", version, "--tracking-uri", uri).returncode == 0
        port = free_port()
        server = _serve(uri, "models:/bank@champion", port)
        try:
            status, answer = _ask(port, {"inputs": MIXED})
            assert status == 200, answer
            scored = {task for r in answer["predictions"] if r["scores"] for task in r["scores"]}
            assert scored == ({"banking", "travel", "cooking"} if version == "2" else {"banking", "travel"})
            status, answer = _ask(port, {"inputs": MIXED, "params": {"task": "cooking"}})
            assert status == (200 if version == "2" else 400), answer
            if version == "2":
                _bad_requests_are_400_in_one_short_line(port)
                _concurrent_requests_get_the_serial_answers(port)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def _bad_requests_are_400_in_one_short_line(port: int) -> None:
    for body, said in (
        ({"inputs": ["fine", 3, None]}, "text 1 of the request is a number"),
        ({"inputs": ["x" * 1_000_000]}, "has 1000000 characters; the limit is 4000"),
        ({"inputs": ["hello"] * 65}, "holds 65 texts; the limit is 64 per request"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [["x", "y"]]}}, "a table of 2 columns"),
    ):
        status, answer = _ask(port, body)
        assert status == 400 and said in answer["message"] and len(json.dumps(answer)) < 500, answer


def _concurrent_requests_get_the_serial_answers(port: int) -> None:
    import random
    from concurrent.futures import ThreadPoolExecutor

    from continual.streams.demo_data import demo_examples

    texts = [t for task in ("banking", "travel", "cooking") for t, _ in demo_examples(task, "test")]
    rng = random.Random(1)
    bodies = [{"inputs": rng.sample(texts, rng.randint(1, 24))} for _ in range(32)]
    serial = [_ask(port, body) for body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        assert list(pool.map(lambda body: _ask(port, body), bodies)) == serial


def test_concurrent_requests_to_one_loaded_model_get_the_serial_answers(registered):
    """32 requests of mixed tasks and params at once on one loaded model (as `mlflow models serve` runs
    them: worker threads sharing the model) answer exactly as the same requests one at a time."""
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import mlflow

    from continual.streams.demo_data import demo_examples

    _, uri = registered
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/bank/2")
    texts = [t for task in ("banking", "travel", "cooking") for t, _ in demo_examples(task, "test")]
    rng = random.Random(0)
    params = [None, {"task": "travel"}, {"accept_rate": 0.5}, {"all_tasks": True}]
    requests = [(rng.sample(texts, rng.randint(1, 24)), params[n % len(params)]) for n in range(32)]
    serial = [model.predict(r, params=p) for r, p in requests]
    start = threading.Barrier(len(requests))

    def ask(request):
        start.wait()
        return model.predict(request[0], params=request[1])

    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(ask, requests))
    assert concurrent == serial


def test_a_run_folder_and_its_registered_version_abstain_alike(registered, monkeypatch, capsys):
    """One default for both: the run folder keeps its calibration, so `continual predict RUN` rejects what the
    served version rejects (0.99 of in-scope validation texts accepted), with the same answers."""
    import mlflow

    root, uri = registered
    texts = [*MIXED, "what is the capital of peru", "zebra quantum"]
    args = [a for t in texts for a in ("--text", t)]
    proc = main_in_process(monkeypatch, capsys, "predict", root / "first", *args, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_folder = [json.loads(line) for line in proc.stdout.splitlines()]
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model("models:/bank/1").predict(texts)
    assert from_folder == served and (root / "first" / "calibration.safetensors").is_file()
