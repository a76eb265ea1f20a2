"""The one exception type that the CLI turns into a single ``error: ...`` line and a non-zero exit."""

from __future__ import annotations


class ContinualError(Exception):
    """A problem with the user's config or data, reported as one line naming the file/field at fault."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, cut to ``limit`` characters: library messages (MLflow, SQLAlchemy,
    datasets) run to many lines, and an ``error:`` line must stay one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
