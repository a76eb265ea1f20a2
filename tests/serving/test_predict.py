"""Reading prediction inputs: formats, optional task field, one-line errors."""

import pytest

from continual.commands.predict import Query, read_queries
from continual.errors import ContinualError


def test_jsonl_csv_tsv_and_txt_inputs(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"text": "hello", "task": "banking"}\n\n{"text": "bye"}\n')
    (tmp_path / "q.csv").write_text('utterance,task\n"hello, there",travel\nbye,\n')
    (tmp_path / "q.tsv").write_text("text\nhello\n")
    (tmp_path / "q.txt").write_text("hello\n\n  \nbye\n")
    assert read_queries(tmp_path / "q.jsonl") == [Query("hello", "banking"), Query("bye")]
    assert read_queries(tmp_path / "q.csv", "utterance") == [Query("hello, there", "travel"), Query("bye")]
    assert read_queries(tmp_path / "q.tsv") == [Query("hello")]
    assert read_queries(tmp_path / "q.txt") == [Query("hello"), Query("bye")]
    (tmp_path / "bom.csv").write_bytes("\ufefftext,task\nhello,banking\n".encode())  # as spreadsheets save it
    assert read_queries(tmp_path / "bom.csv") == [Query("hello", "banking")]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("q.jsonl", '{"text": "ok"}\n{"text": \n', "q.jsonl line 2 is not JSON"),
        ("q.jsonl", '["just", "a", "list"]\n', "q.jsonl line 1 is list, expected a JSON object"),
        ("q.jsonl", '{"text": 3}\n', "line 1: field 'text' must be a non-empty string, got 3"),
        (
            "q.csv",
            "sentence\nhello\n",
            "q.csv line 2 has no field 'text' (fields: sentence); choose one with --text-field",
        ),
        ("q.xml", "", "must be .jsonl, .json, .csv, .tsv, .parquet or .txt"),
        ("q.csv", b"text\n\xff\xfe\n", "q.csv line 2 is not UTF-8 text"),
        ("q.txt", "\n\n", "holds no texts"),
    ],
)
def test_bad_inputs_are_one_clear_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ContinualError) as err:
        read_queries(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ContinualError, match="file not found"):
        read_queries(tmp_path / "missing.jsonl")


def test_saved_tasks_past_one_hundred_are_in_index_order(tmp_path):
    import torch

    from continual import files
    from continual.learners import saved_tasks
    from continual.learners.adapter_files import task_file

    for k in range(102):  # 00_ .. 99_, then 100_, 101_: sorted as numbers, not as strings
        meta = {"task": f"t{k}", "index": str(k), "labels": '["a", "b"]'}
        files.save_tensors(task_file(tmp_path, k, f"t{k}"), {"head.bias": torch.zeros(2)}, meta)
    assert [t.name for t in saved_tasks(tmp_path)] == [f"t{k}" for k in range(102)]
