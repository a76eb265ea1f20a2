"""Routed inference throughput: one batch mixing 10 adapters vs the same batch through one adapter.

    .venv/bin/python scripts/bench_routing.py [--data ../shared/data/clinc150] [--repeats 15]

Ten Pfeiffer adapters (width 24, non-zero weights so that they do real work) and heads on the
packaged MiniLM; a batch of real CLINC150 test queries (or generated demo texts without --data),
padded once. Each variant runs ``--repeats`` times, interleaved so that machine noise hits all of
them alike; the script prints medians and throughput ratios:

- plain: the backbone with no adapter (the floor);
- single: every example through adapter 0;
- mixed: examples routed uniformly at random over the 10 adapters (sorted into contiguous
  segments, each adapter run once per hooked projection on its slice);
- looped: the naive alternative, one forward pass per adapter present in the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from continual.adapters import BottleneckConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig, pad
from continual.streams import Split, Task


def texts_for(data: Path | None, n: int) -> list[str]:
    if data is not None:
        rows = json.loads((data / "data_full.json").read_text())["test"]
        return [text for text, _ in rows[:: max(1, len(rows) // n)]][:n]
    from continual.streams.demo_data import DEMO_TASKS, demo_examples

    pool = [text for task in DEMO_TASKS for text, _ in demo_examples(task, "test")]
    return (pool * (n // len(pool) + 1))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="CLINC150 folder (data_full.json)")
    parser.add_argument("--adapters", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = Backbone.load()
    learner = AdapterPerTask(
        backbone, BottleneckConfig(bottleneck_dim=24), TrainerConfig(), AdapterPerTaskConfig(progress=False)
    )
    empty = Split((), torch.zeros(0, dtype=torch.long).numpy())
    for k in range(args.adapters):
        learner._allocate(Task(f"t{k}", tuple(f"l{c}" for c in range(15)), empty, empty, empty))
        for p in learner.bank.adapters[k].parameters():  # zero-initialised "up" weights would make adapters no-ops
            torch.nn.init.normal_(p, std=0.02)
    learner.backbone.eval()

    texts = texts_for(args.data, args.batch_size)
    ids, mask = pad(backbone.tokenize(texts, 128), backbone.pad_id, learner.device)
    n = ids.shape[0]
    mixed_ids = torch.randint(0, args.adapters, (n,), generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def plain():
        learner.features(ids, mask)

    def single():
        learner.classify(ids, mask, torch.zeros(n, dtype=torch.long))

    def mixed():
        learner.classify(ids, mask, mixed_ids)

    def looped():
        for k in mixed_ids.unique().tolist():
            rows = mixed_ids == k
            learner.classify(ids[rows], mask[rows], mixed_ids[rows])

    variants = {"plain": plain, "single": single, "mixed": mixed, "looped": looped}
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, device {learner.device}"
    )
    print(f"batch {n} texts (padded to {ids.shape[1]} tokens), {args.adapters} adapters, {args.repeats} repeats\n")
    print(f"{'variant':8} {'median s':>9} {'texts/s':>9} {'vs single':>10}")
    for name, seconds in median.items():
        print(f"{name:8} {seconds:9.4f} {n / seconds:9.0f} {median['single'] / seconds:10.3f}")
    print(f"\nmixed / single throughput: {median['single'] / median['mixed']:.3f}")


if __name__ == "__main__":
    main()
