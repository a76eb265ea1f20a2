"""Bad inputs not covered next to their modules: each is one clear line, before any training."""

import json
import logging
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from transformers import BertConfig, BertModel

from continual import files
from continual.errors import ContinualError
from continual.model.backbone import Backbone
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
    with pytest.raises(
        ContinualError, match=r"text_field 'text' of .*bad.jsonl line 4 is int 12345, expected a string"
    ):
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
    from continual.learners import AdapterPerTask, AdapterPerTaskConfig
    from continual.model.training import TrainerConfig
    from continual.routers import OracleRouter
    from continual.run.checkpoint import RunState
    from continual.run.experiment import RunOptions, run_stream
    from continual.streams import DemoStream
    from continual.tracking import MemoryTracker

    class DivergesOnTaskTwo(AdapterPerTask):
        def learn(self, tasks, on_loss=None):
            if len(self.tasks) == 1:
                self.trainer = dataclasses.replace(self.trainer, lr=1e30, grad_clip=0.0)
            return super().learn(tasks, on_loss)

    config = AdapterPerTaskConfig(progress=False)
    learner = DivergesOnTaskTwo(tiny_backbone, BottleneckConfig(bottleneck_dim=4), TrainerConfig(epochs=1), config)
    with pytest.raises(ContinualError, match="task 'travel': loss is"):
        run_stream(
            DemoStream(max_per_class=8).load(),
            learner,
            OracleRouter(),
            MemoryTracker(),
            RunOptions(tmp_path, progress=False),
        )
    assert RunState.load(tmp_path).completed == 1
    assert (tmp_path / "accuracy_matrix.csv").read_text().splitlines()[1].split(",")[0] != ""
    assert [p.name for p in (tmp_path / "adapters").glob("*.safetensors")] == ["00_banking.safetensors"]


@pytest.mark.slow  # real processes and signals: minutes on 2 cores (bash scripts/test.sh slow)
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


# --- every case of "No fault loses or duplicates data": one error line, before any model is loaded ---------------


@pytest.fixture
def no_model(monkeypatch):
    """Loading a backbone fails the test: these errors must come before any model is loaded."""
    from continual.run import assemble

    def refuse(config):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(assemble, "backbone", refuse)


def _csv(path, text):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


CONFIG_CASES = [
    (["trainer.device=cuda"], "trainer.device=cuda: this machine has no CUDA device"),
    (["learner.head_dropout=2"], "learner.head_dropout must be a number in [0, 1), got 2"),
    (["trainer.precision=fp16"], "trainer.precision must be one of fp32, bf16, auto, got 'fp16'"),
    (["eval.every=0"], "eval.every must be a positive integer, got 0"),
    (["eval.tasks=some"], "eval.tasks must be 'all' or 'sample:K' (K tasks), got 'some'"),
    (["stream=many_tasks", "router=prototype"], "only router=oracle can route it, not PrototypeRouter"),
    (["seed=-1"], "seed must be a non-negative integer, got -1"),
    (["seed=abc"], "seed must be a non-negative integer, got 'abc'"),
    (["threads=-1"], "threads must be a positive integer or null, got -1"),
    (["threads=abc"], "threads must be a positive integer or null, got 'abc'"),
    (["stream.order=[0"], "stream.order=[0: not a valid override"),
    (["router=prototype", "stream.max_per_class=1"], "a learned router needs a stream of at least 2 tasks"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_options_are_one_line_before_any_model(tmp_path, overrides, message, no_model, monkeypatch, capsys):
    args = ["stream.order=[0]"] if "max_per_class" in " ".join(overrides) else []
    line = one_error_line(_cli(monkeypatch, capsys, tmp_path, *overrides, *args))
    assert message in line


def test_output_folders_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")
    line = one_error_line(main_in_process(monkeypatch, capsys, f"hydra.run.dir={tmp_path / 'a-file'}"))
    assert line.endswith("is a file; give a folder")
    line = one_error_line(main_in_process(monkeypatch, capsys, f"hydra.run.dir={tmp_path / 'a-file' / 'run'}"))
    assert "which is a file; give a folder" in line
    line = one_error_line(main_in_process(monkeypatch, capsys, "hydra.run.dir=/proc/continual-run"))
    assert line == "error: hydra.run.dir=/proc/continual-run: cannot create this folder (No such file or directory)"


def test_every_file_a_run_writes_has_the_same_permissions(finished_run):
    modes = {p.relative_to(finished_run).as_posix(): p.stat().st_mode & 0o777 for p in finished_run.rglob("*.*")}
    assert set(modes.values()) == {files.FILE_MODE}, modes  # adapter files were once written 0600


TWO_LABELS = "text,label\nhello there,a\nhow are you,b\ngood morning,a\nsee you soon,b\n"


@pytest.mark.parametrize(
    "task, message",
    [
        ({"name": "x/y"}, "task name 'x/y' may use only letters, digits"),
        ({"name": "../../escaped"}, "task name '../../escaped' may use only"),
        ({"name": "x:1"}, "task name 'x:1' may use only"),  # would share the metric key acc/x_1 with x_1
        ({"text_field": "label"}, "text_field and label_field are both 'label'"),
    ],
)
def test_task_fields_that_would_fail_late_or_silently(tmp_path, task, message):
    path = _csv(tmp_path / "d.csv", TWO_LABELS)
    raw = {"name": "s", "tasks": [{"name": "t", "train": path, "test": path, **task}]}
    with pytest.raises(ContinualError) as err:
        StreamSpec.from_dict(raw)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "train, extra, message",
    [
        (TWO_LABELS + "a,b,c,d\n", {}, "d.csv line 6 has 4 fields, the header has 2"),
        (b"text,label\nhello,a\n\xff\xfe,b\n", {}, "d.csv line 3 is not UTF-8 text"),
        ('{"text": "hi", "label": "a"}\n{"text": "yo", "label": ""}\n', {}, "label_field 'label' of"),
        ('{"text": "hi", "label": "a"}\n{"text": "yo" "label": "b"}\n', {}, "d.jsonl line 2 is not JSON"),
        (TWO_LABELS, {"validation": "other"}, "the validation split has labels that never occur in train: ['c']"),
    ],
)
def test_file_errors_name_file_and_line(tmp_path, train, extra, message):
    suffix = ".jsonl" if isinstance(train, str) and train.startswith("{") else ".csv"
    path = _csv(tmp_path / f"d{suffix}", train)
    test = _csv(tmp_path / "test.csv", TWO_LABELS)
    if "validation" in extra:
        extra = {"validation": _csv(tmp_path / "val.csv", "text,label\nanother one,c\n")}
    raw = {"name": "s", "tasks": [{"name": "t", "train": path, "test": test, **extra}]}
    with pytest.raises(ContinualError) as err:
        StreamSpec.from_dict(raw).load()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_labels_stay_the_strings_the_file_holds(tmp_path):
    text = "text,label\nhello there,01\nhow are you,02\ngood day,NA\nbye now,None\nmorning,01\nsoon,02\n"
    path = _csv(tmp_path / "d.csv", text)
    task = StreamSpec.from_dict({"name": "s", "tasks": [{"name": "t", "train": path, "test": path}]}).load().tasks[0]
    assert task.labels == ("01", "02", "NA", "None")  # not 1 and 2, not "empty"
    raw = {"name": "s", "tasks": [{"name": "t", "train": path, "test": path, "labels": ["01", "02"]}]}
    assert StreamSpec.from_dict(raw).load().tasks[0].labels == ("01", "02")
    bom = _csv(tmp_path / "bom.csv", "\ufeff" + text)
    assert (
        StreamSpec.from_dict({"name": "s", "tasks": [{"name": "t", "train": bom, "test": bom}]}).load().tasks[0].labels
    )


def test_an_unreachable_hub_dataset_fails_in_seconds(tmp_path):
    import time

    from continual import hub

    if hub.reachable():
        pytest.skip("the Hub answers here")
    raw = {"name": "s", "tasks": [{"name": "t", "train": "train", "test": "test", "dataset": "nobody/no-such-set"}]}
    start = time.perf_counter()
    with pytest.raises(ContinualError, match="the Hub is unreachable and it is not in the local cache"):
        StreamSpec.from_dict(raw).load()
    assert time.perf_counter() - start < 15


def test_an_interrupt_before_a_run_saved_its_config_does_not_promise_a_resume(tmp_path, capsys):
    from continual.commands import cli, train
    from continual.errors import Terminated

    train._started[:] = [tmp_path / "extension"]  # an extension stopped before it wrote its config
    with pytest.raises(SystemExit) as stopped:
        cli._interrupted(Terminated())
    said = capsys.readouterr().err.strip()
    assert stopped.value.code == 143 and "resume" not in said.replace("nothing to resume", "")
    assert said == (
        f"terminated (SIGTERM) before the run in {tmp_path / 'extension'} saved its config: there is nothing to "
        "resume; run the command again"
    )
    train._started[:] = []
