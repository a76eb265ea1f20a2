"""The frozen-feature yardstick of a stream: closed forms on the frozen backbone, both protocols.

    .venv/bin/python scripts/frozen_reference.py STREAM [key=value ...]
    .venv/bin/python scripts/frozen_reference.py cl5 data_dir=../shared/data/cl5 order=mbpa1 max_per_class=200 \\
        max_eval_per_class=100

STREAM names a file of ``conf/stream/`` (its text tasks); each ``key=value`` replaces a field of it (the value
read as YAML). Every task's training and test texts go once through the packaged MiniLM without adapters, pooled
as the product's heads read them (the last layer's mean), and on those features:

- **LDA** over every class of the stream (shared covariance, shrinkage as ``learner.head_init=lda``);
- **probe**: a logistic regression over every class (as ``learner.head_init=probe``);
- **probe per task**: one probe per task on its own classes, its penalty chosen on the task's validation texts,
  which is where the product's heads start before their adapters train (task given only).

"no task id" = the best class of all; "task given" = the best of the task's own classes. ACC is the mean over
tasks of the test accuracy, as R's last row; a class shared by two tasks (cl5's stars) is one class. Issue 26's
mark: the product's task-given ACC >= the LDA's no-task-id ACC + 1 at one epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from continual.adapters import BottleneckConfig
from continual.learners import AdapterPerTask, AdapterPerTaskConfig
from continual.learners.base import padded_batches, tokenize
from continual.learners.head_init import fitted_probe, lda, probe
from continual.model.backbone import Backbone
from continual.model.training import TrainerConfig
from continual.run.assemble import stream_file, stream_source
from continual.streams import Task

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def features(learner: AdapterPerTask, texts: tuple[str, ...]) -> torch.Tensor:
    """What a new head reads of ``texts`` before its adapter trains (``[n, hidden]``): the learner's frozen
    features, batched as its evaluation batches them."""
    tokens = tokenize(learner, texts)
    out = torch.empty(len(tokens), learner.backbone.hidden_size)
    for idx, ids, mask in padded_batches(learner, tokens):
        out[torch.as_tensor(idx)] = learner.features(ids, mask).cpu()
    return out


def predict(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, own: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear classifier's answers over all classes: the best of all, and the best of ``own``."""
    logits = x @ weight.T + bias
    return logits.argmax(1), torch.as_tensor(own)[logits[:, own].argmax(1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stream", help="a file of conf/stream/, without .yaml")
    parser.add_argument("overrides", nargs="*", help="key=value fields of the stream file")
    args = parser.parse_args()
    path = ROOT / "conf/stream" / f"{args.stream}.yaml"
    if not path.is_file():
        parser.error(f"no stream file {path}; one of: {', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}")
    node = stream_file(path)
    for item in args.overrides:
        key, _, value = item.partition("=")
        node[key] = yaml.safe_load(value)
    tasks: list[Task] = [t for t in stream_source(node).load().tasks if t.kind.per_text]
    if not tasks:
        parser.error(f"{args.stream} has no task with a label per text (token tasks are not compared here)")
    classes = sorted({c for t in tasks for c in t.classes})
    index = {c: i for i, c in enumerate(classes)}
    learner = AdapterPerTask(Backbone.load(), BottleneckConfig(), TrainerConfig(), AdapterPerTaskConfig(progress=False))
    start = time.perf_counter()
    train_x, train_y, tests, held_out = [], [], [], []
    for t in tasks:
        ids = [index[c] for c in t.classes]
        train_x.append(features(learner, t.train.texts))
        train_y.append(torch.as_tensor([ids[y] for y in t.train.labels]))
        held_out.append((features(learner, t.validation.texts), torch.as_tensor(t.validation.labels)))
        tests.append((features(learner, t.test.texts), torch.as_tensor([ids[y] for y in t.test.labels]), ids))
        print(f"  features of {t.name}: {len(t.train)} train, {len(t.test)} test", flush=True)
    x, y = torch.cat(train_x), torch.cat(train_y)
    seconds = time.perf_counter() - start
    print(f"{args.stream}: {len(tasks)} tasks, {len(classes)} classes, {len(x)} train texts ({seconds:.0f} s)")
    rows = {"LDA, all classes": lda(x, y, len(classes)), "probe, all classes": probe(x, y, len(classes))}
    print(f"{'closed form':<22} {'no task id':>10} {'task given':>10}")
    for name, (weight, bias) in rows.items():
        accs = []
        for test_x, test_y, own in tests:
            best, best_own = predict(weight, bias, test_x, own)
            accs.append(((best == test_y).float().mean().item(), (best_own == test_y).float().mean().item()))
        free, given = np.mean(accs, axis=0) * 100
        print(f"{name:<22} {free:>10.2f} {given:>10.2f}")
    given = []
    for (test_x, test_y, own), tx, ty, held in zip(tests, train_x, train_y, held_out):
        local = torch.full((len(classes),), -1, dtype=torch.long)  # the stream's class -> the task's label
        local[own] = torch.arange(len(own))
        weight, bias, _ = fitted_probe((tx, local[ty]), held, len(own))  # as the product's heads start
        given.append(((test_x @ weight.T + bias).argmax(1) == local[test_y]).float().mean().item())
    each = ", ".join(f"{100 * g:.1f}" for g in given)
    print(f"{'probe per task':<22} {'':>10} {np.mean(given) * 100:>10.2f}   (per task: {each})")


if __name__ == "__main__":
    main()
