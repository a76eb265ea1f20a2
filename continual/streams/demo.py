"""The offline default stream: four generated intent tasks (banking, travel, cooking, fitness)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from continual.streams.demo_data import DEMO_TASKS, demo_examples
from continual.streams.task import Stream, apply_order, build_task, label_space_of


@dataclass(frozen=True)
class DemoStream:
    """Generated, so the default experiment needs no files and no network; see ``demo_data``."""

    name: str = "demo"
    order: Sequence[int | str] | str | None = None
    orders: Mapping[str, Sequence[int | str]] = field(default_factory=dict)
    max_per_class: int | None = None
    seed: int = 0
    label_space: str = "per_task"

    def load(self, launch_dir: Path | None = None) -> Stream:
        tasks = [
            build_task(
                name,
                demo_examples(name, "train", self.seed),
                demo_examples(name, "test", self.seed),
                demo_examples(name, "validation", self.seed),
                max_per_class=self.max_per_class,
                seed=self.seed,
                where=f"stream '{self.name}' task '{name}'",
                label_space=label_space_of(self.label_space, None, f"stream '{self.name}'"),
                sources={
                    s: f"generated:continual.streams.demo_data/{name}/{s}?seed={self.seed}"
                    for s in ("train", "validation", "test")
                },
            )
            for name in DEMO_TASKS
        ]
        return Stream(self.name, apply_order(tasks, self.order, dict(self.orders)))
