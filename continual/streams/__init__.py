"""Task streams: plain-data tasks and the sources that build them (files, Hub, CLINC150, demo).

Every source is a frozen dataclass with a ``name`` and ``load(launch_dir) -> Stream``: that method
reads and validates all data, so bad input fails before a model is loaded.
"""

from __future__ import annotations

from continual.streams.clinc150 import Clinc150Domains, Clinc150Intents
from continual.streams.concatenated import Concatenated
from continual.streams.demo import DemoStream
from continual.streams.many import ManyTasks
from continual.streams.spec import StreamSpec, TaskSpec
from continual.streams.task import Split, Stream, StreamSource, Task, apply_order, build_task

__all__ = [
    "Clinc150Domains",
    "Clinc150Intents",
    "Concatenated",
    "DemoStream",
    "ManyTasks",
    "Split",
    "Stream",
    "StreamSource",
    "StreamSpec",
    "Task",
    "TaskSpec",
    "apply_order",
    "build_task",
]
