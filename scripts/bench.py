"""Speed of `continual` against the peer reference, measured side by side in one process.

    .venv/bin/pip install -e ".[bench]"      # peft + accelerate for the reference
    .venv/bin/python scripts/bench.py --data ../shared/data/clinc150 [--domains 10] [--repeats 15]

On the same CLINC150 domain stream, the same packaged MiniLM, epochs, batch size, lr and warm-up:

1. end to end (train every task + fill the whole accuracy matrix, oracle task ids): ``continual``'s
   ``run_stream`` vs the peft reference (scripts/peft_reference.py: a LoRA adapter per task trained
   with ``Trainer`` + ``DataCollatorWithPadding``, every seen task evaluated after every task).
   Prints both accuracies (ACC = mean of the last row of R) and the throughput ratio; ``--peft-epochs 1 3 5``
   runs the reference once per epoch count, for the ratio at equal accuracy (ours at ``--epochs``);
2. evaluation cost as the stream grows (T = 2, 5, 10): seconds per test example to fill R for the
   first T tasks with the adapters trained in 1, memoised (ours) and recomputed (the plain path);
3. routed inference on one batch of test queries: single adapter vs a batch mixing every adapter,
   ours and peft's ``adapter_names``;
4. the frozen-prefix cache: a run with AdapterDrop (``adapter.skip_layers``), several epochs and the
   prototype router on the upper layers' features, with the cache on vs off (same results expected);
5. precision: the same tasks trained in fp32, in bf16 (``trainer.precision``: the frozen backbone held in bf16,
   attending plainly on a CPU), in bf16 with torch's fused attention kernel and in bf16 autocast over an fp32
   backbone (what bf16 was before each change), taking turns ``--precision-repeats`` times:
   median training seconds, the ratios and each one's task-given accuracy, with what ``precision=auto`` would
   choose on this machine and why;
6. peak resident memory after each part.

Parts 2 and 3 interleave their variants ``--repeats`` times and report medians; part 1 runs once
(minutes per side). Ratios are what to read: the machine is noisy and shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from continual.adapters import BottleneckConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.learners.base import oracle_score
from continual.model.backbone import PACKAGED_MINILM, Backbone, resolve_name
from continual.model.training import TrainerConfig, native_bf16, pad
from continual.routers import OracleRouter, PrototypeRouter
from continual.run.evaluation import Evaluator
from continual.run.experiment import RunOptions, run_stream
from continual.streams import Clinc150Domains, Stream
from continual.tracking import MemoryTracker

if TYPE_CHECKING:  # peft is optional: imported where the reference runs
    from peft_reference import PeftResult


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per variant, the variants taking turns so that machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def end_to_end(args, stream, trainer: TrainerConfig) -> tuple[AdapterPerTask, PeftResult | None]:
    print(
        f"\n## 1. end to end: {len(stream.tasks)} tasks, {sum(len(t.train.texts) for t in stream.tasks)} train / "
        f"{sum(len(t.test.texts) for t in stream.tasks)} test examples, {trainer.epochs} epoch(s)"
    )
    ours = {}
    learner = None
    for skip in args.ours_skip_layers:  # the first variant's learner is kept for parts 2 and 3
        torch.manual_seed(0)
        variant = AdapterPerTask(
            Backbone.load(),
            BottleneckConfig(placement=args.placement, skip_layers=skip),
            trainer,
            AdapterPerTaskConfig(progress=False),
        )
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_stream(stream, variant, OracleRouter(), MemoryTracker(), RunOptions(Path(out), progress=False))
            seconds = time.perf_counter() - start
        train = result.state.train_seconds
        ours[skip] = (seconds, float(np.mean(result.state.R[-1])) * 100)
        print(
            f"continual ({args.placement}, skip_layers={skip})  ACC {ours[skip][1]:.2f}  {seconds:.1f} s "
            f"(train {train:.1f} s, rest {seconds - train:.1f} s)  peak RSS {peak_rss_mb():.0f} MB"
        )
        if learner is None:
            learner = variant
        else:
            variant.bank.remove_hooks()
    assert learner is not None, "--ours-skip-layers names at least one value"
    if args.skip_peft:
        return learner, None
    from peft_reference import run_peft_stream

    peft = None
    for epochs in args.peft_epochs or [trainer.epochs]:
        peft = run_peft_stream(
            resolve_name(PACKAGED_MINILM),
            stream.tasks,
            epochs,
            trainer.batch_size,
            trainer.eval_batch_size,
            args.peft_lr,
            trainer.warmup_ratio,
            trainer.max_length,
        )
        print(
            f"peft LoRA reference, {epochs} epoch(s)  ACC {peft.acc * 100:.2f}  {peft.seconds:.1f} s "
            f"(train {peft.train_seconds:.1f} s, eval {peft.eval_seconds:.1f} s)  peak RSS {peak_rss_mb():.0f} MB"
        )
        for skip, (seconds, acc) in ours.items():
            gap = acc - peft.acc * 100
            level = (
                "equal accuracy (within 0.5)"
                if abs(gap) <= 0.5
                else "ours more accurate: at equal accuracy the ratio is at least this"
                if gap > 0
                else "peft more accurate: not an equal-accuracy point"
            )
            print(
                f"  ours skip_layers={skip} vs peft at {epochs} epoch(s): **{peft.seconds / seconds:.2f}x** the "
                f"speed, ACC difference {acc - peft.acc * 100:+.2f} points ({level})"
            )
    return learner, peft


def evaluation_growth(args, learner: AdapterPerTask, stream) -> None:
    print("\n## 2. evaluation cost as T grows (fill R for the first T tasks; s per distinct test example)")
    sizes = [t for t in (2, 5, 10) if t <= len(stream.tasks)]
    router = OracleRouter()
    for memoise in (True, False):
        per_example = {}
        for T in sizes:
            tasks = stream.tasks[:T]
            examples = sum(len(t.test.texts) for t in tasks)

            def fill(tasks=tasks, memoise=memoise) -> None:
                evaluator = Evaluator(learner, router, tasks, memoise=memoise)
                for i in range(len(tasks)):
                    evaluator.new_step()
                    for j in range(i + 1):
                        evaluator.evaluate(j)

            seconds = interleaved({"fill": fill}, args.eval_repeats if memoise else 1)["fill"]
            per_example[T] = seconds / examples
            print(
                f"{'memoised' if memoise else 'plain   '}  T={T:2d}: {seconds:6.2f} s for {examples} test examples, "
                f"{per_example[T] * 1e3:.3f} ms/example"
            )
        print(f"  T={sizes[-1]} / T={sizes[0]} per example: **{per_example[sizes[-1]] / per_example[sizes[0]]:.2f}x**")


def routed_inference(args, learner: AdapterPerTask, peft, stream) -> None:
    print(
        f"\n## 3. routed inference: one batch of {args.batch_size} test queries over {len(learner.tasks)} adapters "
        f"(medians of {args.repeats})"
    )
    texts = [text for t in stream.tasks for text in t.test.texts][:: max(1, len(stream.tasks))][: args.batch_size]
    ids, mask = pad(learner.backbone.tokenize(texts, 128), learner.backbone.pad_id, learner.device)
    n = ids.shape[0]
    mixed = torch.randint(0, len(learner.tasks), (n,), generator=torch.Generator().manual_seed(1))
    variants: dict[str, Callable[[], object]] = {
        "ours single": lambda: learner.classify(ids, mask, torch.zeros(n, dtype=torch.long)),
        "ours mixed": lambda: learner.classify(ids, mask, mixed),
    }
    if peft is not None:
        batch = peft.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        names = [peft.names[k] for k in mixed.tolist()]

        @torch.no_grad()
        def peft_single() -> None:
            peft.model(**batch, adapter_names=[peft.names[0]] * n)

        @torch.no_grad()
        def peft_mixed() -> None:
            peft.model(**batch, adapter_names=names)

        variants.update({"peft single": peft_single, "peft mixed": peft_mixed})
    medians = interleaved(variants, args.repeats)
    for name, seconds in medians.items():
        print(f"{name:12s} {n / seconds:8.1f} examples/s")
    print(f"ours mixed / ours single: **{medians['ours single'] / medians['ours mixed']:.3f}x**")
    if peft is not None:
        print(
            f"peft mixed / peft single: {medians['peft single'] / medians['peft mixed']:.3f}x; "
            f"ours mixed vs peft mixed: **{medians['peft mixed'] / medians['ours mixed']:.2f}x**"
        )


def prefix_cache(args, stream) -> None:
    tasks = stream.task_names[: args.cache_domains]
    sub = Clinc150Domains(data_dir=str(args.data), domains=tasks, max_per_class=args.cache_per_class).load()
    sub = Stream(sub.name, sub.tasks)  # without the out-of-scope texts
    skip, layers = args.skip_layers, tuple(range(args.skip_layers, 7))
    print(
        f"\n## 4. frozen-prefix cache: {len(tasks)} tasks, {args.cache_per_class} train texts per intent, "
        f"{args.cache_epochs} epochs, Pfeiffer with adapter.skip_layers={skip}, "
        f"prototype router on layers {list(layers)}"
    )
    rows = {}
    for cache_mb in (args.cache_mb, 0):
        trainer = TrainerConfig(epochs=args.cache_epochs, cache_mb=cache_mb)
        learner = AdapterPerTask(
            Backbone.load(), BottleneckConfig(skip_layers=skip), trainer, AdapterPerTaskConfig(progress=False)
        )
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_stream(
                sub, learner, PrototypeRouter(layers=layers), MemoryTracker(), RunOptions(Path(out), progress=False)
            )
            seconds = time.perf_counter() - start
        rows[cache_mb] = (seconds, float(np.mean(result.state.R[-1])) * 100)
        cached = (
            f", {len(learner.cache)} texts / {learner.cache.bytes / 2**20:.0f} MB kept for evaluation"
            if learner.cache is not None
            else ""
        )
        print(
            f"cache_mb={cache_mb:<5}  ACC {rows[cache_mb][1]:.2f}  {seconds:.1f} s{cached}  "
            f"peak RSS {peak_rss_mb():.0f} MB"
        )
        learner.bank.remove_hooks()
    print(
        f"cache on vs off: **{rows[0][0] / rows[args.cache_mb][0]:.2f}x** faster, ACC difference "
        f"{rows[args.cache_mb][1] - rows[0][1]:+.2f}"
    )


# part 5's variants: the trainer's precision, the dtype the frozen backbone is then put back in and the attention it
# then uses (None: as the learner set them). "bf16 fused attention" is bf16 as it was before the backbone attended
# plainly on a CPU in bf16; "bf16 autocast" as it was before the backbone was held in bf16 (every weight cast per call)
PRECISION_VARIANTS: dict[str, tuple[str, torch.dtype | None, str | None]] = {
    "fp32": ("fp32", None, None),
    "bf16": ("bf16", None, None),
    "bf16 fused attention": ("bf16", None, "sdpa"),
    "bf16 autocast": ("bf16", torch.float32, "sdpa"),
}


def precision(args, stream) -> None:
    tasks = stream.task_names[: args.precision_domains]
    sub = Clinc150Domains(data_dir=str(args.data), domains=tasks, max_per_class=args.precision_per_class).load()
    device = TrainerConfig().torch_device()
    native, why = native_bf16(str(device))
    print(
        f"\n## 5. precision: {len(tasks)} tasks, {args.precision_per_class} train texts per intent, 1 epoch, "
        f"{', '.join(PRECISION_VARIANTS)} taking turns {args.precision_repeats} times; precision=auto here: "
        f"{'bf16' if native else 'fp32'} ({why})"
    )
    seconds: dict[str, list[float]] = {name: [] for name in PRECISION_VARIANTS}
    accs: dict[str, list[float]] = {name: [] for name in PRECISION_VARIANTS}
    backbones = {name: Backbone.load() for name in PRECISION_VARIANTS}  # each its own: bf16 rounds what it holds
    for _ in range(args.precision_repeats):
        for name, (kind, put_back, attention) in PRECISION_VARIANTS.items():
            torch.manual_seed(0)
            trainer = TrainerConfig(epochs=1, precision=kind)
            learner = AdapterPerTask(backbones[name], BottleneckConfig(), trainer, AdapterPerTaskConfig(progress=False))
            if put_back is not None:
                backbones[name].place(device, put_back)
            if attention is not None:
                backbones[name].model.set_attn_implementation(attention)
            for k, task in enumerate(sub.tasks):
                start = time.perf_counter()
                learner.learn([task])
                seconds[name].append(time.perf_counter() - start)
                accs[name].append(oracle_score(learner, k, task, task.test) * 100)
            learner.bank.remove_hooks()
            took = sum(seconds[name][-len(sub.tasks) :])
            print(f"  {name}: {took:.1f} s to train {len(sub.tasks)} tasks", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name in seconds:
        print(f"{name}: {medians[name]:.1f} s per task (median), task-given accuracy {np.mean(accs[name]):.2f}")
    for name in list(PRECISION_VARIANTS)[1:]:
        print(
            f"{name} vs fp32: **{medians['fp32'] / medians[name]:.2f}x** the training speed, accuracy "
            f"{np.mean(accs[name]) - np.mean(accs['fp32']):+.2f}"
        )
    print(f"bf16 (plain attention) vs bf16 fused attention: {medians['bf16 fused attention'] / medians['bf16']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CLINC150 folder (data_full.json + domains.json)")
    parser.add_argument("--domains", type=int, default=10, help="first N domains as tasks")
    parser.add_argument("--max-per-class", type=int, default=None, help="cap train examples per intent")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--placement", default="pfeiffer", help="our bottleneck placement: pfeiffer | houlsby")
    parser.add_argument(
        "--ours-skip-layers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0],
        help="AdapterDrop variants of ours in part 1, e.g. 0,2 (the first feeds parts 2 and 3)",
    )
    parser.add_argument("--peft-lr", type=float, default=5e-3, help="learning rate of the peft LoRA reference")
    parser.add_argument(
        "--peft-epochs",
        type=int,
        nargs="+",
        default=None,
        help="epochs of the peft reference, one run each (default: --epochs): ours at --epochs against peft at the "
        "epochs it needs to reach our accuracy",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="inference batch (part 3)")
    parser.add_argument("--repeats", type=int, default=15, help="repeats of the inference benchmark")
    parser.add_argument("--eval-repeats", type=int, default=3, help="repeats of each memoised matrix fill")
    parser.add_argument("--cache-domains", type=int, default=3, help="tasks of the cache benchmark (part 4)")
    parser.add_argument("--cache-per-class", type=int, default=50)
    parser.add_argument("--cache-epochs", type=int, default=3)
    parser.add_argument("--skip-layers", type=int, default=3, help="AdapterDrop depth in part 4")
    parser.add_argument("--cache-mb", type=float, default=1024)
    parser.add_argument("--precision-domains", type=int, default=2, help="tasks of the precision benchmark (part 5)")
    parser.add_argument("--precision-per-class", type=int, default=20)
    parser.add_argument("--precision-repeats", type=int, default=3)
    parser.add_argument("--parts", default="12345", help="which parts to run (2 and 3 need 1)")
    parser.add_argument("--skip-peft", action="store_true", help="ours only (no peft installed)")
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    stream = Clinc150Domains(data_dir=str(args.data), max_per_class=args.max_per_class).load()
    stream = Stream(stream.name, stream.tasks[: args.domains])
    trainer = TrainerConfig(epochs=args.epochs)
    if "1" in args.parts:
        learner, peft = end_to_end(args, stream, trainer)
        if "2" in args.parts:
            evaluation_growth(args, learner, stream)
        if "3" in args.parts:
            routed_inference(args, learner, peft, stream)
        learner.bank.remove_hooks()
    if "4" in args.parts:
        prefix_cache(args, stream)
    if "5" in args.parts:
        precision(args, stream)
    print(f"\npeak RSS of the whole benchmark: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
