"""The ``continual`` command end to end on a tiny random model and a temporary MLflow store.

One test goes through a real subprocess (the Hydra door as users start it); the rest call
``continual.commands.cli.main`` in this process, which is the same code path without the start-up cost.
"""

import json

import pytest

from conftest import (
    cli,
    compose,
    copy_run,
    main_in_process,
    mlflow_runs,
    one_error_line,
    stream_yaml,
    tiny_overrides,
    write_jsonl,
)


def _run(tmp_path, model_dir, conf, *overrides):
    return [
        "--config-dir",
        str(conf),
        "stream=two_tasks",
        *tiny_overrides(tmp_path, model_dir),
        f"hydra.run.dir={tmp_path}/run",
        *overrides,
    ]


def test_two_task_stream_through_the_cli_into_mlflow(tmp_path, tiny_model_dir, demo_files):
    conf = stream_yaml(tmp_path / "my_conf", demo_files, max_per_class=20)
    proc = cli(tmp_path, *_run(tmp_path, tiny_model_dir, conf, "stream.order=[1,0]", "seed=3", "router=oracle"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ACC (avg accuracy)" in proc.stdout and "mlflow ui --backend-store-uri sqlite:" in proc.stdout

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    (run,) = mlflow_runs(uri)
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"the run's page      {page}?workflowType=machine_learning" in proc.stdout  # the UI's training view
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.params["stream.order"] == "[1, 0]" and run.data.params["seed"] == "3"
    assert run.data.tags["stream"] == "two_tasks" and run.data.tags["router"] == "oracle"
    history = {
        k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
        for k in ("acc/travel", "acc/banking", "avg_acc", "bwt", "forgetting")
    }
    assert [s for s, _ in history["acc/travel"]] == [0, 1]  # travel is learned first
    assert [s for s, _ in history["acc/banking"]] == [1]
    assert history["acc/travel"][0][1] == history["acc/travel"][1][1]
    assert history["bwt"] == [(1, 0.0)] and history["forgetting"] == [(1, 0.0)]
    assert client.get_metric_history(run.info.run_id, "train_loss/travel")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "accuracy_matrix.csv",
        "accuracy_matrix.png",
        "accuracy_curves.png",
        "config.yaml",
        "adapters",
        "summary.txt",
        "results.json",
    } <= artifacts
    assert any(p.endswith(".log") for p in artifacts)  # the job's log file
    adapters = {a.path for a in client.list_artifacts(run.info.run_id, "adapters")}
    assert adapters == {"adapters/00_travel.safetensors", "adapters/01_banking.safetensors"}
    assert (tmp_path / "run" / "accuracy_matrix.csv").read_text().splitlines()[0] == "travel,banking"


def test_the_default_router_is_learned_so_predict_works_on_a_default_run():
    assert compose([]).hydra.runtime.choices.router == "prototype"


@pytest.mark.parametrize(
    "task_extra, message, creates_run",
    [
        ({"lables": ["a"]}, "unknown field 'lables'", False),
        ({"text_field": "utterance"}, "text_field 'utterance' is not a field of", True),
        ({"labels": ["check_balance", "no_such_label"]}, "names ['no_such_label'] which do not occur", True),
    ],
)
def test_bad_input_is_one_line_and_marks_the_run_failed(
    tmp_path, tiny_model_dir, demo_files, task_extra, message, creates_run, monkeypatch, capsys
):
    conf = stream_yaml(tmp_path / "my_conf", {"banking": demo_files["banking"]}, **task_extra)
    line = one_error_line(main_in_process(monkeypatch, capsys, *_run(tmp_path, tiny_model_dir, conf, "router=oracle")))
    assert message in line
    assert [r.info.status for r in mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")] == (
        ["FAILED"] if creates_run else []
    )


def test_missing_data_file_unknown_option_and_unreachable_server(
    tmp_path, tiny_model_dir, demo_files, monkeypatch, capsys
):
    conf = stream_yaml(
        tmp_path / "my_conf", {"banking": {"train": tmp_path / "nope.csv", "test": demo_files["banking"]["test"]}}
    )
    line = one_error_line(main_in_process(monkeypatch, capsys, *_run(tmp_path, tiny_model_dir, conf)))
    assert f"file not found: {tmp_path / 'nope.csv'}" in line
    line = one_error_line(main_in_process(monkeypatch, capsys, *_run(tmp_path, tiny_model_dir, conf, "router=psychic")))
    options = "classifier, entropy, head, oracle, prototype, ridge"
    assert line == f"error: router=psychic: no such option; router options: {options}"
    for sweep in ((), ("-m", "seed=0,1")):  # an unknown key: one line (Hydra's own message runs to five)
        line = one_error_line(main_in_process(monkeypatch, capsys, *sweep, "trainer.bogus=1"))
        assert line == (
            "error: Could not override 'trainer.bogus' (Key 'bogus' is not in struct); "
            "to append to your config use +trainer.bogus=1"
        )
    line = one_error_line(
        main_in_process(monkeypatch, capsys, *_run(tmp_path, tiny_model_dir, conf, "tracking.uri=http://127.0.0.1:9"))
    )
    assert "no MLflow server answers at http://127.0.0.1:9" in line


def _predict(monkeypatch, capsys, *args):
    return main_in_process(monkeypatch, capsys, "predict", *args, "--no-progress")


def test_predict_with_a_learned_router_from_the_folder_and_from_mlflow(finished_run, tmp_path, monkeypatch, capsys):
    texts = ["what is my account balance", "book a flight to paris", "zq zq zq"]
    write_jsonl(tmp_path / "in.jsonl", [{"text": texts[1]}, {"text": texts[2]}, {"text": texts[0], "task": "banking"}])
    proc = _predict(
        monkeypatch,
        capsys,
        finished_run,
        "--text",
        texts[0],
        "--input",
        tmp_path / "in.jsonl",
        "--output",
        tmp_path / "out.jsonl",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [texts[0], texts[1], texts[2], texts[0]]
    for row in rows:
        assert set(row) == {"text", "task", "label", "confidence", "scores", "abstained", "routed"}
        assert row["abstained"] == (row["task"] is None)
        if row["routed"]:
            assert set(row["scores"]) == {"banking", "travel"}
    assert rows[3]["task"] == "banking" and rows[3]["routed"] is False and rows[3]["scores"] is None

    store = finished_run.parent / "mlflow.db"
    (run,) = mlflow_runs(f"sqlite:///{store}")  # the same run, read back from its MLflow artifacts
    proc = _predict(monkeypatch, capsys, run.info.run_id, "--tracking-uri", f"sqlite:///{store}", "--text", texts[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout.splitlines()[0])  # alone in its batch now: equal up to float noise
    assert (again["task"], again["label"]) == (rows[0]["task"], rows[0]["label"])
    assert again["scores"] == pytest.approx(rows[0]["scores"], rel=1e-4)


def _wider_model(tiny_model_dir, path):
    from transformers import BertConfig, BertModel, BertTokenizer

    config = BertConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 48, 96
    BertModel(config).save_pretrained(path)
    BertTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)


def test_predict_errors_are_each_one_line(finished_run, tiny_model_dir, tmp_path, monkeypatch, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    other = tmp_path / "other-bert"
    _wider_model(tiny_model_dir, other)
    cases = [
        ((run, "--text", "hi", f"backbone.name={other}"), "adapters only load onto the backbone"),
        ((run, "--text", "hi", "--task", "cooking"), "tasks ['cooking'] are not tasks of this run"),
        ((run,), "give texts with --text or --input"),
        ((run, "--text", "hi", "--frobnicate"), "unrecognized arguments ['--frobnicate']"),
        ((tmp_path, "--text", "hi"), "not a run output folder (no config.yaml)"),
        (("0" * 31, "--text", "hi"), "is neither a run folder, an MLflow run id, nor a model version"),
    ]
    for args, message in cases:
        assert message in one_error_line(_predict(monkeypatch, capsys, *args))
    (run / "router.safetensors").unlink()
    assert "no router state" in one_error_line(_predict(monkeypatch, capsys, run, "--text", "hi"))


def test_predict_needs_tasks_for_an_oracle_run_and_a_learned_router_needs_two_tasks(
    tmp_path, tiny_model_dir, demo_files, monkeypatch, capsys
):
    conf = stream_yaml(tmp_path / "my_conf", {"banking": demo_files["banking"]}, max_per_class=10)
    line = one_error_line(main_in_process(monkeypatch, capsys, *_run(tmp_path, tiny_model_dir, conf)))
    assert "a learned router needs a stream of at least 2 tasks" in line  # the default router, before any model
    proc = main_in_process(
        monkeypatch,
        capsys,
        *_run(tmp_path, tiny_model_dir, conf, "router=oracle", f"hydra.run.dir={tmp_path / 'oracle'}"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = one_error_line(_predict(monkeypatch, capsys, tmp_path / "oracle", "--text", "what is my balance"))
    assert "router=oracle, which cannot route new text" in line
    proc = _predict(monkeypatch, capsys, tmp_path / "oracle", "--text", "what is my balance", "--task", "banking")
    assert proc.returncode == 0 and json.loads(proc.stdout)["task"] == "banking"
