"""What AdapterFusion costs per training step as tasks accumulate, against a plain new adapter.

    .venv/bin/python scripts/bench_fusion.py [--tasks 5 20 100] [--steps 9] [--batch 32] [--precision fp32]

For each T, in one process, on the packaged MiniLM with T - 1 earlier Pfeiffer adapters (random non-zero
weights, frozen) and a new task T: the median time of one training step (forward, backward, optimiser step
over the new task's own parameters) on a batch of demo texts, for

- ``none``: the new adapter alone (``learner.transfer=none``), the reference of every ratio;
- ``attention all`` / ``attention top:3``: ``learner.transfer=fusion`` (``fusion.kind=attention``) over
  every earlier adapter, or three of them;
- ``static all``: ``fusion.kind=static`` over every earlier adapter;

interleaved (one step of each per round, ``--steps`` rounds after one warm-up round); then, per variant, the
median time of one inference pass of the batch routed to the new task (what a fused task's rows cost in a
served batch), and its bytes per task (the fusion weights a task file adds to its adapter).

``--precision`` is ``trainer.precision`` (fp32, bf16, auto): under bf16 the backbone is held in bf16 and the
steps run under autocast, as the learner trains.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from continual.adapters import BottleneckConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig, pad
from continual.streams import DemoStream

VARIANTS = {  # name -> (fusion kind, sources: None = all); none = no fusion
    "none": None,
    "attention all": ("attention", None),
    "attention top:3": ("attention", 3),
    "static all": ("static", None),
}


def _learner(backbone: Backbone, earlier: int, trainer: TrainerConfig) -> AdapterPerTask:
    """A learner with ``earlier`` frozen adapters of random non-zero weights and their heads."""
    learner = AdapterPerTask(backbone, BottleneckConfig(), trainer, AdapterPerTaskConfig(progress=False))
    torch.manual_seed(0)
    for _ in range(earlier):
        k = learner.bank.add()
        learner.heads.add(10, learner.device)
        with torch.no_grad():
            for p in learner.bank.adapters[k].parameters():
                p.normal_(0, 0.02)
        for module in (learner.bank.adapters[k], learner.heads[k]):
            module.requires_grad_(False)
    return learner


def _new_task(
    learner: AdapterPerTask, earlier: int, fusion: tuple[str, int | None] | None
) -> tuple[int, list[torch.nn.Parameter]]:
    """Task T's adapter and head (fused as ``fusion`` says, over the ``earlier`` adapters or the last ``top`` of
    them); its trainable parameters."""
    k = learner.bank.add()
    learner.heads.add(10, learner.device)
    if fusion is not None:
        kind, top = fusion
        learner.bank.fuse(k, kind, list(range(0 if top is None else max(0, earlier - top), earlier)))
    modules = [*learner.bank.own_modules(k), learner.heads[k]]
    return k, [p for m in modules for p in m.parameters()]


def _step(learner: AdapterPerTask, k: int, params, ids, mask, labels) -> float:
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    start = time.perf_counter()
    with learner.bank.routed([(k, 0, ids.shape[0])]), learner.trainer.autocast(learner.device):
        features = learner._encode(ids, mask, None)
        loss = torch.nn.functional.cross_entropy(learner.heads.logits(k, features).float(), labels)
    loss.backward()
    optimiser.step()
    optimiser.zero_grad()
    return time.perf_counter() - start


@torch.no_grad()
def _infer(learner: AdapterPerTask, k: int, ids, mask) -> float:
    """One inference pass of the batch routed to task ``k`` (what a fused task's rows cost in serving)."""
    start = time.perf_counter()
    with learner.bank.routed([(k, 0, ids.shape[0])]), learner.trainer.autocast(learner.device):
        learner.heads.logits(k, learner._encode(ids, mask, None))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    args = parser.parse_args()
    trainer = TrainerConfig(precision=args.precision)
    texts = [t for task in DemoStream().load().tasks for t in task.train.texts][: args.batch]
    chosen = trainer.precision_on(torch.device("cpu"))
    print(f"torch threads {torch.get_num_threads()}; batch {len(texts)} demo texts; {args.steps} steps; {chosen}")
    print(f"{'T':>4} {'variant':<16} {'ms/step':>8} {'x none':>7} {'infer ms':>9} {'x none':>7} {'fusion MB/task':>15}")
    for tasks in args.tasks:
        backbone = Backbone.load()
        learner = _learner(backbone, tasks - 1, trainer)
        ids, mask = pad(backbone.tokenize(texts, 64), backbone.pad_id, learner.device)
        labels = torch.arange(len(texts)) % 10
        made = {}
        for name, fusion in VARIANTS.items():  # each variant: task T's own fresh adapter, head and fusion
            made[name] = _new_task(learner, tasks - 1, fusion)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        infer: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_ in range(args.steps + 1):
            for name, (k, params) in made.items():
                seconds = _step(learner, k, params, ids, mask, labels)
                inference = _infer(learner, k, ids, mask)
                if round_:
                    times[name].append(seconds)
                    infer[name].append(inference)
        base, base_infer = statistics.median(times["none"]), statistics.median(infer["none"])
        for name, (k, _) in made.items():
            fused = learner.bank.fusion[str(k)] if learner.bank.fused(k) else None
            mb = 0.0 if fused is None else sum(p.numel() * 4 for p in fused.parameters()) / 2**20
            ms, inf = statistics.median(times[name]), statistics.median(infer[name])
            print(
                f"{tasks:>4} {name:<16} {1000 * ms:>8.1f} {ms / base:>6.2f}x"
                f" {1000 * inf:>9.1f} {inf / base_infer:>6.2f}x {mb:>15.4f}"
            )
        learner.bank.remove_hooks()


if __name__ == "__main__":
    main()
