"""Streams one after another: what ``continual extend`` learns (the run's tasks, then more).

Each part is a stream config node (as ``config.yaml`` stores it) with the folder its relative paths
resolve against, so that a run extended from another folder still finds the first run's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual.streams.task import Stream, check_unique_names


@dataclass(frozen=True)
class Concatenated:
    """The tasks of ``parts`` in order; each part is ``{"source": <stream node>, "launch_dir": <folder>}``."""

    name: str
    parts: Sequence[Mapping[str, Any]]

    def load(self, launch_dir: Path | None = None) -> Stream:
        from continual.assemble import stream_source

        streams = [stream_source(part["source"]).load(Path(part["launch_dir"])) for part in self.parts]
        tasks = tuple(task for stream in streams for task in stream.tasks)
        check_unique_names([t.name for t in tasks], f"stream '{self.name}': the tasks of the run and of the extension")
        out_of_scope = tuple(dict.fromkeys(text for stream in streams for text in stream.out_of_scope))
        return Stream(self.name, tasks, out_of_scope)
