"""What a served bank accepts in one request: one column of non-empty strings, within documented limits.

A request is checked before any text is routed. Every refusal is one short line naming the position
of the first bad text and what it is, never its content (a 1 MB text must not come back as a 1 MB
error). The limits keep one request well inside MLflow's 60 s request timeout on 2 CPU cores (about
100 routed texts per second with the packaged MiniLM): a request of more texts is refused, not left
computing after its client has gone. Set them for a server with the environment variables
``CONTINUAL_MAX_TEXTS`` and ``CONTINUAL_MAX_CHARS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from continual.checks import check_int
from continual.errors import ContinualError

MAX_TEXTS = 1000  # texts per request (about 10 s on 2 cores)
MAX_CHARS = 4000  # characters per text (far more than the 128 tokens a text is cut to)
VARIABLES = {"max_texts": ("CONTINUAL_MAX_TEXTS", MAX_TEXTS), "max_chars": ("CONTINUAL_MAX_CHARS", MAX_CHARS)}


@dataclass(frozen=True)
class Limits:
    max_texts: int = MAX_TEXTS
    max_chars: int = MAX_CHARS

    @classmethod
    def from_environment(cls) -> Limits:
        """The limits a server was started with (the environment variables of :data:`VARIABLES`), else defaults."""
        values = {}
        for field, (variable, default) in VARIABLES.items():
            raw = os.environ.get(variable)
            try:
                values[field] = default if raw is None else int(raw)
            except ValueError:
                raise ContinualError(f"{variable} must be a positive integer, got {raw!r}") from None
            check_int(values[field], variable, low=1)
        return cls(**values)


def _what(value: Any) -> str:
    """What a value is, in a few words (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        return "a number"
    if isinstance(value, (list, tuple, dict)) or hasattr(value, "__len__"):
        return f"a {type(value).__name__} (nested)"
    return f"a {type(value).__name__}"


def _column(model_input: Any) -> list[Any]:
    """The values of a request that must be one column: a string, a flat list, a one-column frame or series."""
    if isinstance(model_input, str):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # a pandas frame
        if len(columns) != 1:
            raise ContinualError(f"the request must be one column of texts, got a table of {len(columns)} columns")
        return list(model_input.iloc[:, 0])
    if getattr(model_input, "ndim", 1) != 1:  # a numpy array of more than one axis
        raise ContinualError("the request must be one column of texts, got nested lists")
    if isinstance(model_input, dict) or not hasattr(model_input, "__iter__"):
        raise ContinualError(f"the request must be a list of texts, got {_what(model_input)}")
    return list(model_input)


def texts_of(model_input: Any, limits: Limits) -> list[str]:
    """The request's texts, checked: a list of at most ``max_texts`` non-empty strings of at most ``max_chars``."""
    values = _column(model_input)
    if not values:
        raise ContinualError("the request holds no texts")
    if len(values) > limits.max_texts:
        raise ContinualError(
            f"the request holds {len(values)} texts; the limit is {limits.max_texts} per request "
            "(send several requests, or raise CONTINUAL_MAX_TEXTS where the server starts)"
        )
    for n, value in enumerate(values):
        if not isinstance(value, str):
            raise ContinualError(f"text {n} of the request is {_what(value)}, not a string")
        if not value.strip():
            raise ContinualError(f"text {n} of the request is empty")
        if len(value) > limits.max_chars:
            raise ContinualError(
                f"text {n} of the request has {len(value)} characters; the limit is {limits.max_chars} "
                "(CONTINUAL_MAX_CHARS)"
            )
    return values
