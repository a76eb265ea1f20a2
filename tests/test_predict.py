"""Reading prediction inputs: formats, optional task field, one-line errors."""

import pytest

from continual.errors import ContinualError
from continual.predict import Query, read_queries


def test_jsonl_csv_tsv_and_txt_inputs(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"text": "hello", "task": "banking"}\n\n{"text": "bye"}\n')
    (tmp_path / "q.csv").write_text('utterance,task\n"hello, there",travel\nbye,\n')
    (tmp_path / "q.tsv").write_text("text\nhello\n")
    (tmp_path / "q.txt").write_text("hello\n\n  \nbye\n")
    assert read_queries(tmp_path / "q.jsonl") == [Query("hello", "banking"), Query("bye")]
    assert read_queries(tmp_path / "q.csv", "utterance") == [Query("hello, there", "travel"), Query("bye")]
    assert read_queries(tmp_path / "q.tsv") == [Query("hello")]
    assert read_queries(tmp_path / "q.txt") == [Query("hello"), Query("bye")]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("q.jsonl", '{"text": "ok"}\n{"text": \n', "q.jsonl line 2: not a JSON object"),
        ("q.jsonl", '["just", "a", "list"]\n', "expected a JSON object with field 'text'"),
        ("q.jsonl", '{"text": 3}\n', "line 1: field 'text' must be a non-empty string, got 3"),
        ("q.csv", "sentence\nhello\n", "no column 'text'"),
        ("q.parquet", "", "must be .jsonl, .csv, .tsv or .txt"),
        ("q.txt", "\n\n", "holds no texts"),
    ],
)
def test_bad_inputs_are_one_clear_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ContinualError, match=message):
        read_queries(tmp_path / name)
    with pytest.raises(ContinualError, match="file not found"):
        read_queries(tmp_path / "missing.jsonl")
