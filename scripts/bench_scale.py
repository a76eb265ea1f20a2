"""Many adapters on one resident backbone: mixed batches, memory, load time and routing cost at N adapters.

    .venv/bin/python scripts/bench_scale.py [--adapters 10 100 1000] [--repeats 9] [--peft]

For each N, in one process, on the packaged MiniLM with N Pfeiffer adapters (width 24, random
non-zero weights) and heads, a batch of 128 demo texts padded once:

- **mixed / single**: a batch whose examples are routed uniformly at random over the N adapters,
  against the same batch through one adapter, as throughput ratios: ``batched`` (each site gathers
  every row's adapter weights from its stack and runs ``bmm``: what the bank does from
  ``BATCHED_FROM`` segments) and ``loop`` (one small computation per adapter and site). Variants are
  interleaved, medians kept.
- **resident memory**: RSS growth from creating the N adapters and heads, against their bytes; and
  ``+mixed``: the growth that the mixed batches add to plain batches' (the sites' stacks take the
  adapters' weights over rather than copying them, so this is working memory, not a second copy).
- **load time**: saving the N adapters (one safetensors file each) and loading them into a fresh learner.
- **lazy**: loading them again under ``--resident-mb`` (``learner.max_resident_mb``): the RSS growth of
  the load, the adapter bytes held after mixed batches, and their throughput against the all-resident
  learner's (each batch reads back from the files what it needs: the cost of the budget).
- **router**: the prototype router's and the ridge router's cost per query over N tasks of 10 classes
  (1920-dim features: the default five layers), 256 queries; the ridge router's saved state (MB).
- **one site**: the bottleneck update of 128 rows over 118 adapters alone (what a 1,000-adapter batch
  holds): gathered from the site's stack (what the bank does outside training), stacking the routed
  adapters' weights on each call (training, or adapters under a residency budget), and one adapter.
- ``--peft``: the same mixed batch through peft's ``adapter_names`` over N LoRA adapters (query/value,
  r=8) on the same backbone, against one adapter (needs ``pip install peft``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from continual import files
from continual.adapters import BottleneckConfig
from continual.adapters import bank as bank_module
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.learners.base import digest
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig, pad
from continual.routers.prototype import ClassStatistics
from continual.routers.ridge import RidgeRouter
from continual.streams import Split, Task

CLASSES_PER_TASK = 10


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MB, after handing freed heap back to the system (memory a
    previous N freed would otherwise be reused and hide the growth)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def texts(n: int) -> list[str]:
    from continual.streams.demo_data import DEMO_TASKS, demo_examples

    pool = [text for task in DEMO_TASKS for text, _ in demo_examples(task, "test")]
    return (pool * (n // len(pool) + 1))[:n]


def tasks(n: int) -> list[Task]:
    empty = Split((), np.zeros(0, dtype=np.int64))
    return [Task(f"t{k}", tuple(f"l{c}" for c in range(CLASSES_PER_TASK)), empty, empty, empty) for k in range(n)]


def medians(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def build(n: int) -> tuple[AdapterPerTask, float, float]:
    """A learner with ``n`` random adapters and heads; RSS before them (MB) and the adapters' and heads' bytes (MB)."""
    torch.manual_seed(0)
    learner = AdapterPerTask(
        Backbone.load(), BottleneckConfig(bottleneck_dim=24), TrainerConfig(), AdapterPerTaskConfig(progress=False)
    )
    before = rss_mb()
    for task in tasks(n):
        k = learner._allocate(task)
        for p in learner.bank.adapters[k].parameters():  # zero "up" weights would make adapters no-ops
            torch.nn.init.normal_(p, std=0.02)
    params = sum(p.numel() * p.element_size() for p in [*learner.bank.parameters(), *learner.heads.parameters()])
    learner.backbone.eval()
    return learner, before, params / 2**20


def load_seconds(learner: AdapterPerTask, n: int, budget_mb: float, batch: Callable[[AdapterPerTask], object]):
    """Seconds to save the ``n`` adapters (a file each), to check their sha256 (the integrity check before a
    load) and to load them into a fresh learner; then, loaded
    again under a residency budget of ``budget_mb``: the RSS growth of that load, the adapter bytes held
    after a mixed batch (``batch``) and that batch's seconds."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        learner.save(Path(folder))
        saved = time.perf_counter() - start
        fresh = AdapterPerTask(
            learner.backbone, learner.bank.config, TrainerConfig(), AdapterPerTaskConfig(progress=False)
        )
        manifest = {p.name: files.sha256(p) for p in Path(folder).glob("*.safetensors")}  # what a run records
        start = time.perf_counter()
        files.verify(Path(folder), manifest)  # what predict, serving, resume and extend check before a load
        checked = time.perf_counter() - start
        start = time.perf_counter()
        fresh.load(Path(folder), tasks(n))
        loaded = time.perf_counter() - start
        fresh.bank.remove_hooks()
        del fresh
        lazy = AdapterPerTask(
            learner.backbone,
            learner.bank.config,
            TrainerConfig(),
            AdapterPerTaskConfig(progress=False, max_resident_mb=budget_mb),
        )
        digest(learner.backbone)  # the load hashes the backbone, whose weights are a memory map of its file: page
        before = rss_mb()  # them in first (about 85 MB for MiniLM) so that they do not count as the load's growth
        lazy.load(Path(folder), tasks(n))
        grown = rss_mb() - before
        seconds = medians({"lazy": lambda: batch(lazy)}, 3)["lazy"]  # each reads back what it needs
        assert lazy.resident is not None
        held = lazy.resident.resident_bytes / 2**20  # back under the budget after the batch
        lazy.bank.remove_hooks()
    return saved, loaded, checked, grown, held, seconds


def router_ms(n: int, queries: int = 256, dim: int = 1920) -> dict[str, float]:
    """Milliseconds per query of the prototype router's task scores over ``n`` tasks (Mahalanobis) and of the
    ridge router's (``router=ridge``, default dim 4,000), and the ridge router's saved state in MB."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n * 2 * CLASSES_PER_TASK, dim))
    labels = np.tile(np.repeat(np.arange(CLASSES_PER_TASK), 2), n)
    stats = ClassStatistics()
    for k in range(n):
        rows = slice(k * 2 * CLASSES_PER_TASK, (k + 1) * 2 * CLASSES_PER_TASK)
        stats.add(k, features[rows], labels[rows], CLASSES_PER_TASK)
    ridge = RidgeRouter(lambdas=[100.0])
    ridge.ridge.add(features, np.arange(n).repeat(2 * CLASSES_PER_TASK) * CLASSES_PER_TASK + labels, n * 10)
    ridge.class_task = np.arange(n).repeat(CLASSES_PER_TASK)
    for k in range(n):
        ridge.validation.add(k, features[k * 20 : (k + 1) * 20], labels[k * 20 : (k + 1) * 20])
    ridge.ridge.fit()
    x = rng.standard_normal((queries, dim))
    stats.task_scores(stats.class_scores(x, "mahalanobis"), n)  # whitening is computed once, then kept
    times = {}
    for name, route in (
        ("prototype", lambda: stats.task_scores(stats.class_scores(x, "mahalanobis"), n)),
        ("ridge", lambda: ridge.task_scores(ridge.ridge.scores(x))),
    ):
        start = time.perf_counter()
        for _ in range(3):
            route()
        times[name] = (time.perf_counter() - start) / 3 / queries * 1000
    times["ridge_mb"] = sum(v.nbytes for v in ridge.state_dict().values()) / 2**20
    return times


def ours(n: int, batch: int, repeats: int, budget: float) -> dict[str, float]:
    learner, before, params = build(n)
    grown = rss_mb() - before
    ids, mask = pad(learner.backbone.tokenize(texts(batch), 128), learner.backbone.pad_id, learner.device)
    mixed = torch.randint(0, n, (batch,), generator=torch.Generator().manual_seed(1))
    single = torch.zeros(batch, dtype=torch.long)
    batched_from = bank_module.BATCHED_FROM

    def loop() -> None:
        bank_module.BATCHED_FROM = 10**9
        try:
            learner.classify(ids, mask, mixed)
        finally:
            bank_module.BATCHED_FROM = batched_from

    learner.classify(ids, mask, single)
    loop()
    plain = rss_mb()  # after batches that make no stacks
    times = medians(
        {
            "single": lambda: learner.classify(ids, mask, single),
            "batched": lambda: learner.classify(ids, mask, mixed),
            "loop": loop,
        },
        repeats,
    )
    mixed_mb = rss_mb() - plain  # with the sites' stacks made
    saved, loaded, checked, lazy_mb, held_mb, lazy_s = load_seconds(
        learner, n, budget, lambda lazy: lazy.classify(ids, mask, mixed)
    )
    learner.bank.remove_hooks()
    return {
        "batched": times["single"] / times["batched"],
        "loop": times["single"] / times["loop"],
        "segments": float(mixed.unique().numel()),
        "rss_mb": grown,
        "mixed_mb": mixed_mb,
        "params_mb": params,
        "save_s": saved,
        "load_s": loaded,
        "check_s": checked,
        "lazy_rss_mb": lazy_mb,
        "lazy_held_mb": held_mb,
        "lazy_vs_resident": times["batched"] / lazy_s,
        **{f"router_{k}": v for k, v in router_ms(n).items()},
    }


def peft_ratio(n: int, batch: int, repeats: int) -> float:
    """peft's mixed-batch inference (``adapter_names``) over ``n`` LoRA adapters, as a ratio to one adapter."""
    from peft import LoraConfig, get_peft_model

    backbone = Backbone.load()
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])
    model = get_peft_model(backbone.model, config, adapter_name="a0")
    for k in range(1, n):
        model.add_adapter(f"a{k}", config)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters real work
            torch.nn.init.normal_(p, std=0.02)
    model.eval()
    ids, mask = pad(backbone.tokenize(texts(batch), 128), backbone.pad_id, torch.device("cpu"))
    mixed = [f"a{k}" for k in torch.randint(0, n, (batch,), generator=torch.Generator().manual_seed(1)).tolist()]

    @torch.no_grad()
    def run(names: list[str]) -> None:
        model(input_ids=ids, attention_mask=mask, adapter_names=names)

    times = medians({"single": lambda: run(["a0"] * batch), "mixed": lambda: run(mixed)}, repeats)
    return times["single"] / times["mixed"]


def one_site(repeats: int, rows: int = 128, length: int = 16, hidden: int = 384, width: int = 24, adapters: int = 118):
    """Milliseconds of one site's update: gathered from the stack; stacked per call; one adapter."""
    from continual.adapters.bottleneck import Bottleneck
    from continual.adapters.stacked import SiteStacks

    torch.manual_seed(0)
    config = BottleneckConfig(bottleneck_dim=width)
    modules = [Bottleneck(hidden, width) for _ in range(adapters)]
    for module in modules:
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02)
    index = torch.sort(torch.arange(rows) % adapters).values  # rows sorted by adapter, as the bank routes them
    routed = list(range(adapters))
    out = torch.randn(rows, length, hidden)
    weights = [config.row_weights(m) for m in modules]
    stacks = SiteStacks()

    def from_stack() -> torch.Tensor:
        return config.run_rows(modules[0], stacks.rows("site", routed, index, lambda: weights), out, out)

    def per_call() -> torch.Tensor:
        return config.run_rows(modules[0], tuple(torch.stack(w)[index] for w in zip(*weights)), out, out)

    with torch.no_grad():
        torch.testing.assert_close(from_stack(), per_call())
        times = medians(
            {"one adapter": lambda: modules[0](out, out), "from the stack": from_stack, "stacked per call": per_call},
            max(repeats, 21),
        )
    return {name: 1000 * t for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--peft", action="store_true", help="also peft adapter_names (pip install peft)")
    parser.add_argument("--resident-mb", type=float, default=20.0, help="residency budget of the lazy load")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; batch {args.batch_size}, {args.repeats} repeats; "
        f"bank batches from {bank_module.BATCHED_FROM} segments\n"
    )
    header = (
        "N       segments  mixed/single batched  loop  peft   RSS MB  +mixed  params MB  save s  load s  check s"
        "  router ms/q: prototype ridge  ridge MB"
        f"  lazy ({args.resident_mb:g} MB): load RSS MB, held MB, mixed vs resident"
    )
    print(header)
    for n in args.adapters:
        row = ours(n, args.batch_size, args.repeats, args.resident_mb)
        peft = f"{peft_ratio(n, args.batch_size, args.repeats):5.2f}" if args.peft else "  n/a"
        print(
            f"{n:<7} {row['segments']:8.0f}  {row['batched']:21.2f} {row['loop']:5.2f} {peft}  "
            f"{row['rss_mb']:7.1f}  {row['mixed_mb']:6.1f}  {row['params_mb']:9.1f}  "
            f"{row['save_s']:6.2f}  {row['load_s']:6.2f}  {row['check_s']:7.2f}  "
            f"{row['router_prototype']:21.3f} {row['router_ridge']:5.3f} {row['router_ridge_mb']:9.1f}  "
            f"{row['lazy_rss_mb']:8.1f} {row['lazy_held_mb']:6.1f} "
            f"{row['lazy_vs_resident']:6.2f}",
            flush=True,
        )
    site = one_site(args.repeats)
    print("\none site, 128 rows over 118 adapters: " + ", ".join(f"{k} {v:.2f} ms" for k, v in site.items()))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
