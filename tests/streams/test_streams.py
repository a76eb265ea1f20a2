import json
from pathlib import Path

import numpy as np
import pytest

from continual.errors import ContinualError
from continual.streams import Clinc150Domains, DemoStream, StreamSpec
from continual.streams.demo_data import demo_examples

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def spec(tasks, **extra):
    return StreamSpec.from_dict({"name": "s", "tasks": tasks, **extra})


def task(name, files, **extra):
    return {"name": name, "train": str(files[name]["train"]), "test": str(files[name]["test"]), **extra}


def test_jsonl_stream_loads_with_labels_carve_and_caps(demo_files):
    stream = spec(
        [task("banking", demo_files, max_per_class=20), task("travel", demo_files, labels=["visa_info", "book_flight"])]
    ).load()
    assert stream.task_names == ["banking", "travel"]
    banking, travel = stream.tasks
    assert len(banking.labels) == 5
    # 20 per class capped, then 10% carved per class for validation
    assert len(banking.train) == 5 * 18 and len(banking.validation) == 5 * 2
    assert travel.labels == ("visa_info", "book_flight")  # subset keeps the given order
    assert set(np.unique(travel.test.labels)) == {0, 1}
    assert len(travel.test) == 40
    assert not set(banking.train.texts) & set(banking.validation.texts)


def test_validation_carve_is_deterministic(demo_files):
    a = spec([task("banking", demo_files)]).load().tasks[0]
    b = spec([task("banking", demo_files)]).load().tasks[0]
    assert a.validation.texts == b.validation.texts
    c = spec([task("banking", demo_files)], split_seed=1).load().tasks[0]
    assert a.validation.texts != c.validation.texts


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_other_file_formats(tmp_path, fmt):
    import pandas as pd

    frames = {
        s: pd.DataFrame([{"utterance": t, "intent": lab} for t, lab in demo_examples("cooking", s)])
        for s in ("train", "test")
    }
    paths = {}
    for split, frame in frames.items():
        paths[split] = tmp_path / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(paths[split], index=False)
        elif fmt == "parquet":
            frame.to_parquet(paths[split])
        else:
            frame.to_json(paths[split], orient="records")
    stream = spec(
        [
            {
                "name": "c",
                "train": str(paths["train"]),
                "test": str(paths["test"]),
                "text_field": "utterance",
                "label_field": "intent",
            }
        ]
    ).load()
    assert len(stream.tasks[0].test) == 100


def test_relative_paths_resolve_against_data_dir(demo_files, tmp_path):
    stream = StreamSpec.from_dict(
        {
            "name": "s",
            "data_dir": str(tmp_path / "data"),
            "tasks": [{"name": "travel", "train": "travel/train.jsonl", "test": "travel/test.jsonl"}],
        }
    ).load()
    assert len(stream.tasks[0].test) == 100


def test_order_by_index_name_and_named_order(demo_files):
    tasks = [task("banking", demo_files), task("travel", demo_files)]
    assert spec(tasks, order=[1, 0]).load().task_names == ["travel", "banking"]
    assert spec(tasks, order=["travel"]).load().task_names == ["travel"]
    assert spec(tasks, order="rev", orders={"rev": [1, 0]}).load().task_names == ["travel", "banking"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"name": "s"}, "missing required field 'tasks'"),
        ({"name": "s", "tasks": [{"name": "a", "train": "x.csv"}]}, "missing required field 'test'"),
        ({"name": "s", "tasks": [{"name": "a", "train": "x", "test": "y", "lables": ["q"]}]}, "unknown field 'lables'"),
        (
            {
                "name": "s",
                "tasks": [{"name": "a", "train": "x", "test": "y"}, {"name": "a", "train": "x", "test": "y"}],
            },
            "task names must be unique; repeated: ['a']",
        ),
        ({"name": "s", "tasks": [{"name": "a", "train": "x", "test": "y", "max_per_class": 0}]}, "positive integer"),
        ({"name": "s", "tasks": [{"name": "a", "train": 3, "test": "y"}]}, "field 'train' must be a string"),
        ({"name": "s", "tasks": []}, "non-empty list"),
    ],
)
def test_bad_stream_files_name_the_field(raw, message):
    with pytest.raises(ContinualError) as err:
        StreamSpec.from_dict(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": "/nonexistent/train.jsonl"}, "file not found: /nonexistent/train.jsonl"),
        ({"text_field": "utterance"}, "text_field 'utterance' is not a field of"),
        ({"label_field": "intent"}, "label_field 'intent' is not a field of"),
        ({"labels": ["check_balance", "no_such_label"]}, "names ['no_such_label'] which do not occur"),
        ({"labels": ["check_balance"]}, "at least 2 labels"),
    ],
)
def test_bad_data_names_task_and_field(demo_files, change, message):
    with pytest.raises(ContinualError) as err:
        spec([{**task("banking", demo_files), **change}]).load()
    assert message in str(err.value)
    assert "task 'banking'" in str(err.value)


def test_unknown_order_fails_before_reading_data():
    stream = spec([{"name": "a", "train": "/missing/a.csv", "test": "/missing/b.csv"}], order=[3])
    with pytest.raises(ContinualError, match="index 3 is out of range"):
        stream.load()


def test_unreadable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("hello")
    with pytest.raises(ContinualError, match="cannot tell the format"):
        spec([{"name": "a", "train": str(bad), "test": str(bad)}]).load()
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(ContinualError, match="empty.csv"):
        spec([{"name": "a", "train": str(empty), "test": str(empty)}]).load()


def test_demo_stream():
    stream = DemoStream().load()
    assert stream.task_names == ["banking", "travel", "cooking", "fitness"]
    assert all(len(t.labels) == 5 and len(t.test) == 100 for t in stream.tasks)


def _fake_clinc(tmp_path):
    intents = {"bank": ["balance", "transfer"], "travel": ["flight", "hotel"], "food": ["recipe", "timer"]}
    rows = lambda n: [[f"{i} example {k}", i] for d in intents.values() for i in d for k in range(n)]
    (tmp_path / "data_full.json").write_text(json.dumps({"train": rows(10), "val": rows(2), "test": rows(3)}))
    (tmp_path / "domains.json").write_text(json.dumps(intents))
    return tmp_path


def test_clinc150_domains_from_folder(tmp_path):
    stream = Clinc150Domains(data_dir=str(_fake_clinc(tmp_path)), order=[2, 0]).load()
    assert stream.task_names == ["food", "bank"]
    food = stream.tasks[0]
    assert food.labels == ("recipe", "timer")
    assert (len(food.train), len(food.validation), len(food.test)) == (20, 4, 6)


def test_clinc150_needs_a_domain_map():
    with pytest.raises(ContinualError, match="field 'data_dir'"):
        Clinc150Domains().load()


@pytest.mark.skipif(not (SHARED / "clinc150" / "data_full.json").is_file(), reason="shared CLINC150 data not present")
def test_clinc150_real_data():
    stream = Clinc150Domains(data_dir=str(SHARED / "clinc150")).load()
    assert len(stream.tasks) == 10
    assert all(len(t.labels) == 15 and len(t.train) == 1500 and len(t.test) == 450 for t in stream.tasks)


def test_many_tasks_are_seeded_clients_that_only_the_oracle_routes():
    from continual.learners.base import Head
    from continual.routers import OracleRouter, PrototypeRouter
    from continual.run.compat import check as check_compatible
    from continual.streams import ManyTasks

    small, large = ManyTasks(num_tasks=10).load(), ManyTasks(num_tasks=20).load()
    assert [t.name for t in small.tasks] == [f"client{k:05d}" for k in range(10)]
    seven, same = small.tasks[7], large.tasks[7]  # a client does not depend on the stream's length
    assert seven.train.texts == same.train.texts and seven.labels == ("label_0", "label_1", "label_2")
    assert (len(seven.train), len(seven.validation), len(seven.test)) == (30, 12, 12)
    assert set(seven.test.texts).isdisjoint(seven.train.texts)
    # two clients of one domain map the same intents to different label orders, or different intents
    assert small.tasks[0].train.texts != small.tasks[4].train.texts
    check_compatible(small, OracleRouter(), Head.PER_TASK, "learner")
    with pytest.raises(ContinualError, match="only router=oracle can route it"):
        check_compatible(small, PrototypeRouter(), Head.PER_TASK, "learner")
    with pytest.raises(ContinualError, match=r"stream.num_tasks must be an integer in \[1, 10000\], got 10001"):
        ManyTasks(num_tasks=10001)
    from continual.commands.train import _describe

    described = _describe(large)  # the start-up log line names the first 20 tasks and counts the rest
    assert "client00019 (3 labels, 30/12/12)" in described and described.endswith("client00019 (3 labels, 30/12/12)")
    assert _describe(ManyTasks(num_tasks=25).load()).endswith("client00019 (3 labels, 30/12/12), ... and 5 more tasks")
