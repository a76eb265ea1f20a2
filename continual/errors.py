"""How a job ends early: the one error type the CLI prints as a single ``error: ...`` line, and interrupts."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ContinualError(Exception):
    """A problem with the user's config or data, reported as one line naming the file/field at fault."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, cut to ``limit`` characters: library messages (MLflow, SQLAlchemy,
    datasets) run to many lines, and an ``error:`` line must stay one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class Terminated(KeyboardInterrupt):
    """SIGTERM (as SLURM and Kubernetes send before killing), handled exactly as Ctrl-C is."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    A job then ends the way Ctrl-C ends it: its tracking run is marked KILLED, its log attached, its
    folder resumable. Outside the main thread (where signals cannot be handled) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
