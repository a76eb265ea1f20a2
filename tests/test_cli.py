"""The ``continual`` command end to end, in a subprocess, on a tiny random model and a temporary MLflow store."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient


def _stream_yaml(conf: Path, files, **task_extra) -> None:
    """A user-written stream file ``conf/stream/two_tasks.yaml`` over the given files."""
    (conf / "stream").mkdir(parents=True, exist_ok=True)
    tasks = [{"name": name, "train": str(paths["train"]), "test": str(paths["test"]), **task_extra}
             for name, paths in files.items()]
    (conf / "stream" / "two_tasks.yaml").write_text(yaml.safe_dump({"name": "two_tasks", "tasks": tasks}))


def _run(tmp_path, tiny_model_dir, *overrides, conf=None):
    args = [sys.executable, "-m", "continual", "stream=two_tasks", f"backbone.name={tiny_model_dir}",
            "trainer.epochs=1", "adapter.bottleneck_dim=4", "progress=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/run", *overrides]
    if conf is not None:
        args[3:3] = ["--config-dir", str(conf)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _runs(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("continual")
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


def test_two_task_stream_through_the_cli_into_mlflow(tmp_path, tiny_model_dir, demo_files):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, demo_files, max_per_class=20)
    proc = _run(tmp_path, tiny_model_dir, "stream.order=[1,0]", "seed=3", conf=conf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ACC (avg accuracy)" in proc.stdout and "mlflow ui --backend-store-uri sqlite:" in proc.stdout

    client, runs = _runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["stream.order"] == "[1, 0]" and run.data.params["seed"] == "3"
    assert run.data.tags["stream"] == "two_tasks"
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
               for k in ("acc/travel", "acc/banking", "avg_acc", "bwt", "forgetting")}
    assert [s for s, _ in history["acc/travel"]] == [0, 1]  # travel is learned first
    assert [s for s, _ in history["acc/banking"]] == [1]
    assert history["acc/travel"][0][1] == history["acc/travel"][1][1]
    assert history["bwt"] == [(1, 0.0)] and history["forgetting"] == [(1, 0.0)]
    assert client.get_metric_history(run.info.run_id, "train_loss/travel")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"accuracy_matrix.csv", "accuracy_matrix.png", "accuracy_curves.png", "config.yaml", "adapters"} <= artifacts
    adapters = {a.path for a in client.list_artifacts(run.info.run_id, "adapters")}
    assert adapters == {"adapters/00_travel.safetensors", "adapters/01_banking.safetensors"}
    csv_text = (tmp_path / "run" / "accuracy_matrix.csv").read_text().splitlines()
    assert csv_text[0] == "travel,banking"


@pytest.mark.parametrize("task_extra, message, creates_run", [
    ({"lables": ["a"]}, "unknown field 'lables'", False),
    ({"text_field": "utterance"}, "text_field 'utterance' is not a column", True),
    ({"labels": ["check_balance", "no_such_label"]}, "names ['no_such_label'] which do not occur", True),
])
def test_bad_input_is_one_line_and_marks_the_run_failed(tmp_path, tiny_model_dir, demo_files, task_extra, message,
                                                        creates_run):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, {"banking": demo_files["banking"]}, **task_extra)
    proc = _run(tmp_path, tiny_model_dir, conf=conf)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == (["FAILED"] if creates_run else [])


def test_missing_data_file_and_unknown_option(tmp_path, tiny_model_dir, demo_files):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, {"banking": {"train": tmp_path / "nope.csv", "test": demo_files["banking"]["test"]}})
    proc = _run(tmp_path, tiny_model_dir, conf=conf)
    assert proc.returncode == 2 and f"file not found: {tmp_path / 'nope.csv'}" in proc.stderr
    proc = _run(tmp_path, tiny_model_dir, "router=psychic", conf=conf)
    assert proc.returncode == 2 and "error: router=psychic: no such option; router options: classifier, entropy, oracle, prototype" in proc.stderr


def test_unreachable_tracking_server_fails_fast(tmp_path, tiny_model_dir, demo_files):
    conf = tmp_path / "my_conf"
    _stream_yaml(conf, demo_files)
    proc = _run(tmp_path, tiny_model_dir, "tracking.uri=http://127.0.0.1:9", conf=conf)
    assert proc.returncode == 2
    assert "no MLflow server answers at http://127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


def _predict(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "continual", "predict", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_predict_with_a_learned_router_from_the_folder_and_from_mlflow(tmp_path, tiny_model_dir, demo_files):
    import json

    conf = tmp_path / "my_conf"
    _stream_yaml(conf, demo_files, max_per_class=20)
    proc = _run(tmp_path, tiny_model_dir, "router=prototype", "router.accept_rate=0.9", conf=conf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "router accuracy" in proc.stdout and "oracle-routed ACC" in proc.stdout
    run_dir = tmp_path / "run"
    assert (run_dir / "router.safetensors").is_file() and (run_dir / "router_confusion.csv").is_file()

    texts = ["what is my account balance", "book a flight to paris", "zq zq zq"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[1:])
                                       + json.dumps({"text": texts[0], "task": "banking"}) + "\n")
    proc = _predict(tmp_path, run_dir, "--text", texts[0], "--input", tmp_path / "in.jsonl",
                    "--output", tmp_path / "out.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [texts[0], texts[1], texts[2], texts[0]]
    for row in rows:
        assert set(row) == {"text", "task", "label", "confidence", "scores", "abstained", "routed"}
        assert row["abstained"] == (row["task"] is None)
        if row["routed"]:
            assert set(row["scores"]) == {"banking", "travel"}
    assert rows[3]["task"] == "banking" and rows[3]["routed"] is False and rows[3]["scores"] is None

    _, runs = _runs(tmp_path)  # the same run, read back from its MLflow artifacts
    proc = _predict(tmp_path, runs[0].info.run_id, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                    "--text", texts[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout.splitlines()[0])  # alone in its batch now: equal up to float noise
    assert (again["task"], again["label"]) == (rows[0]["task"], rows[0]["label"])
    assert again["scores"] == pytest.approx(rows[0]["scores"], rel=1e-4)

    # errors, each one line: an incompatible backbone, a folder without router state, bad arguments
    other = tmp_path / "other-bert"
    _wider_model(tiny_model_dir, other)
    proc = _predict(tmp_path, run_dir, "--text", "hi", f"backbone.name={other}")
    assert proc.returncode == 2 and "adapters only load onto the backbone" in proc.stderr, proc.stderr[-2000:]
    (run_dir / "router.safetensors").unlink()
    proc = _predict(tmp_path, run_dir, "--text", "hi")
    assert proc.returncode == 2 and "no router state" in proc.stderr
    proc = _predict(tmp_path, run_dir)
    assert proc.returncode == 2 and "give texts with --text or --input" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr


def _wider_model(tiny_model_dir, path):
    from transformers import BertConfig, BertModel, BertTokenizer

    config = BertConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 48, 96
    BertModel(config).save_pretrained(path)
    BertTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)


def test_predict_needs_tasks_for_an_oracle_run_and_a_learned_router_needs_two_tasks(tmp_path, tiny_model_dir,
                                                                                   demo_files):
    import json

    conf = tmp_path / "my_conf"
    _stream_yaml(conf, {"banking": demo_files["banking"]}, max_per_class=10)
    proc = _run(tmp_path, tiny_model_dir, "router=entropy", conf=conf)  # fails before any model loads
    assert proc.returncode == 2 and "a learned router needs a stream of at least 2 tasks" in proc.stderr
    proc = _run(tmp_path, tiny_model_dir, "hydra.run.dir=" + str(tmp_path / "oracle"), conf=conf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _predict(tmp_path, tmp_path / "oracle", "--text", "what is my balance")
    assert proc.returncode == 2 and "router=oracle, which cannot route new text" in proc.stderr
    proc = _predict(tmp_path, tmp_path / "oracle", "--text", "what is my balance", "--task", "banking")
    assert proc.returncode == 0 and json.loads(proc.stdout)["task"] == "banking"
