"""A served bank's requests: one column of non-empty strings within the limits, refused in one short line."""

import re

import numpy as np
import pandas as pd
import pytest

from continual.errors import ContinualError
from continual.serving.requests import Limits, texts_of

LIMITS = Limits(max_texts=5, max_chars=50)


@pytest.mark.parametrize(
    "request_, expected",
    [
        (["a", "b"], ["a", "b"]),
        ("one text", ["one text"]),
        (pd.DataFrame({"text": ["x", "y"]}), ["x", "y"]),
        (pd.Series(["x"]), ["x"]),
        (np.array(["x", "y"], dtype=object), ["x", "y"]),
    ],
)
def test_a_column_of_strings_is_its_texts(request_, expected):
    assert texts_of(request_, LIMITS) == expected


@pytest.mark.parametrize(
    "request_, message",
    [
        (["a", 1], "text 1 of the request is a number, not a string"),
        (["a", True], "text 1 of the request is a boolean, not a string"),
        ([None], "text 0 of the request is null, not a string"),
        ([["a", "b"], ["c"]], "text 0 of the request is a list (nested), not a string"),
        (np.array([["a", "b"]]), "one column of texts, got nested lists"),
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), "one column of texts, got a table of 2 columns"),
        ({"a": "x"}, "a list of texts, got a dict (nested)"),
        (42, "a list of texts, got a number"),
        ([], "holds no texts"),
        (["a", "  "], "text 1 of the request is empty"),
        (["x"] * 6, "holds 6 texts; the limit is 5 per request"),
        (["y" * 51], "text 0 of the request has 51 characters; the limit is 50"),
    ],
)
def test_anything_else_is_one_short_line_that_never_echoes_the_request(request_, message):
    with pytest.raises(ContinualError, match=re.escape(message)) as error:
        texts_of(request_, LIMITS)
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONTINUAL_MAX_TEXTS", "7")
    assert Limits.from_environment() == Limits(max_texts=7)
    monkeypatch.setenv("CONTINUAL_MAX_CHARS", "lots")
    with pytest.raises(ContinualError, match="CONTINUAL_MAX_CHARS must be a positive integer, got 'lots'"):
        Limits.from_environment()
