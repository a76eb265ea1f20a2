"""Bad inputs not covered next to their modules: each is one clear line, before any training."""

import json
import logging
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from transformers import BertConfig, BertModel

from continual.backbone import Backbone
from continual.errors import ContinualError
from continual.streams import StreamSpec

from conftest import main_in_process, mlflow_runs, one_error_line, stream_yaml


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _stream(train, test):
    return StreamSpec.from_dict({"name": "s", "tasks": [{"name": "t", "train": train, "test": test}]})


ROWS = [{"text": f"sentence {k}", "label": "ab"[k % 2]} for k in range(20)]


def test_non_string_text_is_rejected(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", ROWS[:3] + [{"text": 12345, "label": "a"}])
    good = _jsonl(tmp_path / "good.jsonl", ROWS)
    with pytest.raises(ContinualError, match=r"text_field 'text' of .*bad.jsonl row 3 is int 12345, expected a string"):
        _stream(bad, good).load()


def test_null_and_blank_texts_are_dropped_and_counted(tmp_path, caplog):
    train = _jsonl(tmp_path / "train.jsonl", ROWS + [{"text": None, "label": "a"}, {"text": "  ", "label": "b"}])
    test = _jsonl(tmp_path / "test.jsonl", ROWS)
    with caplog.at_level(logging.WARNING):
        stream = _stream(train, test).load()
    assert len(stream.tasks[0].train) + len(stream.tasks[0].validation) == 20
    assert "dropped 2 empty or null texts" in caplog.text


def test_test_split_without_some_label(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", ROWS + [{"text": "c text", "label": "c"}] * 3)
    test = _jsonl(tmp_path / "test.jsonl", ROWS)
    with pytest.raises(ContinualError, match=r"the test split has no examples of labels \['c'\]"):
        _stream(train, test).load()


def test_tokenizer_model_mismatch(tiny_model_dir, tmp_path):
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_model_dir, mismatched)
    BertModel(
        BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(mismatched)
    with pytest.raises(ContinualError, match="tokenizer and model do not match"):
        Backbone.load(str(mismatched))


def _cli(monkeypatch, capsys, tmp_path, *args):
    return main_in_process(
        monkeypatch,
        capsys,
        *args,
        "progress=false",
        f"hydra.run.dir={tmp_path}/run",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    )


def test_wrong_type_and_malformed_yaml(tmp_path, monkeypatch, capsys):
    line = one_error_line(_cli(monkeypatch, capsys, tmp_path, "trainer.epochs=many"))
    assert "trainer.epochs must be a positive integer, got 'many'" in line
    conf = tmp_path / "conf" / "stream"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text("name: broken\ntasks: [\n  - name: x\n")
    line = one_error_line(_cli(monkeypatch, capsys, tmp_path, "--config-dir", str(tmp_path / "conf"), "stream=broken"))
    assert "broken.yaml: malformed YAML at line 3, column 3" in line


def test_divergence_names_task_epoch_step_and_fails_the_run(tmp_path, tiny_model_dir, demo_files, monkeypatch, capsys):
    conf = stream_yaml(tmp_path / "conf", demo_files, name="two")
    proc = _cli(
        monkeypatch,
        capsys,
        tmp_path,
        "--config-dir",
        str(conf),
        "stream=two",
        f"backbone.name={tiny_model_dir}",
        "trainer.lr=1e30",
        "trainer.grad_clip=0",
        "trainer.epochs=1",
    )
    line = one_error_line(proc)
    assert "task 'banking': loss is" in line and "at epoch 1, step" in line
    (run,) = mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FAILED"
    assert not list((tmp_path / "run").glob("adapters/*.safetensors"))  # nothing half-learned is saved


def test_divergence_in_a_later_task_keeps_earlier_rows_and_adapters(tiny_backbone, tmp_path):
    import dataclasses

    from continual.adapters import BottleneckConfig
    from continual.checkpoint import RunState
    from continual.experiment import run_stream
    from continual.learners import AdapterPerTask
    from continual.routers import OracleRouter
    from continual.streams import DemoStream
    from continual.tracking import MemoryTracker
    from continual.training import TrainerConfig

    class DivergesOnTaskTwo(AdapterPerTask):
        def learn(self, tasks, on_loss=None):
            if len(self.tasks) == 1:
                self.trainer = dataclasses.replace(self.trainer, lr=1e30, grad_clip=0.0)
            return super().learn(tasks, on_loss)

    learner = DivergesOnTaskTwo(
        tiny_backbone, BottleneckConfig(bottleneck_dim=4), TrainerConfig(epochs=1), progress=False
    )
    with pytest.raises(ContinualError, match="task 'travel': loss is"):
        run_stream(
            DemoStream(max_per_class=8).load(), learner, OracleRouter(), MemoryTracker(), tmp_path, progress=False
        )
    assert RunState.load(tmp_path).completed == 1
    assert (tmp_path / "accuracy_matrix.csv").read_text().splitlines()[1].split(",")[0] != ""
    assert [p.name for p in (tmp_path / "adapters").glob("*.safetensors")] == ["00_banking.safetensors"]


def test_parallel_jobs_creating_one_new_store(tmp_path):
    script = (
        "import sys; from continual.tracking import MLflowTracker;"
        f"t = MLflowTracker('sqlite:///{tmp_path}/store/mlflow.db', 'exp', run_name=sys.argv[1]);"
        "t.log_metrics({'x': 1.0}, step=0); t.finish()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, f"job{k}"], stderr=subprocess.PIPE, text=True) for k in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/store/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2", "job3"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["x"] == 1.0 for r in runs)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["mlflow.db"]  # no temp files left
