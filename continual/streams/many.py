"""Many small tasks, generated offline: one task per "client", for streams of 10 to 10,000 adapters.

Each client relabels utterances of the demo generator: it takes ``labels_per_task`` intents of one
demo domain (client ``t`` takes domain ``t % 4``), names them ``label_0``, ``label_1``, ... in an
order of its own, and samples its own train, validation and test utterances (test ones come from
templates train never saw, as in the demo). Two clients of the same domain share texts but map them to
different labels, so each needs its own adapter and head, and the task id is the client id: only
the oracle router can route this stream (a learned router is refused in one line). Everything is
seeded by ``seed`` and the client index, so client 7 is the same in a stream of 10 or of 10,000.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from continual.checks import check_int
from continual.streams.demo_data import DEMO_TASKS, demo_examples
from continual.streams.task import Pairs, Stream, Task, apply_order, build_task

MAX_TASKS = 10_000
SPLITS = ("train", "validation", "test")
Pools = dict[str, dict[str, dict[str, list[str]]]]  # domain -> split -> intent -> texts
LIMITS = {"labels_per_task": (2, 5), "train_per_label": (1, 60), "eval_per_label": (1, 10)}


@dataclass(frozen=True)
class ManyTasks:
    """``num_tasks`` client tasks of ``labels_per_task`` labels; per label ``train_per_label`` training and
    ``eval_per_label`` validation and test utterances (see the module docstring)."""

    name: str = "many_tasks"
    num_tasks: int = 100
    labels_per_task: int = 3
    train_per_label: int = 10
    eval_per_label: int = 4
    seed: int = 0
    order: Sequence[int | str] | None = None  # indices or names of clients: a subset or another order

    def __post_init__(self) -> None:
        limits = {"num_tasks": (1, MAX_TASKS), **LIMITS}
        for field, (low, high) in limits.items():
            check_int(getattr(self, field), f"stream.{field}", low, high)

    def load(self, launch_dir: Path | None = None) -> Stream:
        pools = _pools(self.seed)
        tasks = tuple(self._client(t, pools) for t in range(self.num_tasks))
        return Stream(self.name, apply_order(tasks, self.order), routable=False)

    def _client(self, t: int, pools: Pools) -> Task:
        rng = random.Random(f"{self.seed}:client{t}")
        domain = DEMO_TASKS[t % len(DEMO_TASKS)]
        intents = rng.sample(sorted(pools[domain]["train"]), self.labels_per_task)
        labels = [f"label_{j}" for j in range(self.labels_per_task)]

        def split(name: str, n: int) -> Pairs:
            return [
                (text, label)
                for intent, label in zip(intents, labels)
                for text in rng.sample(pools[domain][name][intent], n)
            ]

        name = f"client{t:05d}"
        return build_task(
            name,
            split("train", self.train_per_label),
            split("test", self.eval_per_label),
            split("validation", self.eval_per_label),
            labels=labels,
            seed=self.seed,
            where=f"stream '{self.name}' task '{name}'",
            sources={s: f"generated:continual.streams.many/{name}/{s}?seed={self.seed}" for s in SPLITS},
        )


def _pools(seed: int) -> Pools:
    """The demo generator's utterances: domain -> split -> intent -> texts."""
    pools: Pools = {}
    for domain in DEMO_TASKS:
        pools[domain] = {}
        for split in SPLITS:
            by_intent: dict[str, list[str]] = defaultdict(list)
            for text, intent in demo_examples(domain, split, seed):
                by_intent[intent].append(text)
            pools[domain][split] = dict(by_intent)
    return pools
