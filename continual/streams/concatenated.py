"""Streams one after another: what ``continual extend`` learns (the run's tasks, then more).

Each part is a built stream source with the folder its relative paths resolve against, so that a run
extended from another folder still finds the first run's data. In ``config.yaml`` a part is
``{"source": <stream node>, "launch_dir": <folder>}``; :func:`continual.run.assemble.stream_source`
builds the sources before this class sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from continual.streams.task import Stream, StreamSource, check_unique_names


@dataclass(frozen=True)
class Concatenated:
    """The tasks of ``parts`` in order; each part is a source and the folder its paths resolve against."""

    name: str
    parts: Sequence[tuple[StreamSource, str]]

    def load(self, launch_dir: Path | None = None) -> Stream:
        streams = [source.load(Path(folder)) for source, folder in self.parts]
        tasks = tuple(task for stream in streams for task in stream.tasks)
        check_unique_names([t.name for t in tasks], f"stream '{self.name}': the tasks of the run and of the extension")
        out_of_scope = tuple(dict.fromkeys(text for stream in streams for text in stream.out_of_scope))
        return Stream(self.name, tasks, out_of_scope)
