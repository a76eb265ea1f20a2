"""Which router closes the gap to the oracle? Router variants measured on a finished run's adapters.

    .venv/bin/python scripts/router_study.py RUN_DIR [RUN_DIR ...] [--cache runs/router_study]

For each run folder (a per-task adapter run of any stream: its config.yaml names the stream), the
packaged backbone's hidden states (every layer, mean-pooled) are computed once for every split of
every task, and every test query goes once through every task's adapter and head (its pooled
features, labels, certainty and log-probabilities); all of it is cached under ``--cache``. Each router variant is then
built task by task as a run builds it, and after the last task the script prints, per variant:
router accuracy (queries sent to their own task), routed ACC (right task and right label; the mean
over tasks, as R's last row), its gap to the oracle-routed ACC, the share of queries whose task is
in the first stage's top-k, and the cost per query of each stage (milliseconds, measured here).

Variants: the ridge learner (``learner=ridge``: ACC without and with the task id), the ridge router
(``router=ridge``, both rules), ridge + the adapters' own class probabilities over its top 3 tasks (with the
ridge's fit time, lambda and saved state in MB) and the ridge's top-2/3 tasks decided in the earliest
candidate adapter's space, where the later tasks' class means are known (:func:`earlier_space_routes`); the
frozen-feature prototype router (Mahalanobis to class means, shared covariance) on several layer sets; the
entropy router; and two-stage routers that re-rank the prototype's top-k tasks with each candidate adapter's
own features: the Mahalanobis distance of the query's adapted features to that task's class means, under that
task's covariance of its own adapted training features (the statistics a router can keep after learning each
task; no text is kept).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from continual.learners import AdapterPerTask, saved_tasks
from continual.learners.base import padded_batches, tokenize
from continual.model.backbone import pool
from continual.routers.base import RouterInputs
from continual.routers.prototype import ClassStatistics
from continual.routers.ridge import RidgeRouter
from continual.run import assemble
from continual.streams import Stream

SPLITS = ("train", "validation", "test")


def _hidden(learner: AdapterPerTask, texts) -> np.ndarray:
    """``[layers + 1, n, hidden]``: every hidden state of the plain backbone, mean-pooled."""
    tokens = tokenize(learner, texts)
    out: np.ndarray | None = None
    with torch.no_grad(), learner.bank.routed(()):
        for idx, ids, mask in padded_batches(learner, tokens):
            states = learner.backbone.model(**learner.backbone._inputs(ids, mask), output_hidden_states=True)
            pooled = torch.stack([pool(h, mask, "mean") for h in states.hidden_states]).numpy()
            if out is None:
                out = np.empty((pooled.shape[0], len(tokens), pooled.shape[2]), np.float32)
            out[:, idx] = pooled
    assert out is not None
    return out


def _adapted(learner: AdapterPerTask, texts, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Adapter ``k``'s pooled features, its head's label, certainty and log-probabilities, for every text."""
    tokens = tokenize(learner, texts)
    feats = np.empty((len(tokens), learner.backbone.hidden_size), np.float32)
    labels, certainty = np.empty(len(tokens), np.int64), np.empty(len(tokens), np.float32)
    log_probs = np.empty((len(tokens), learner.heads[k].out_features), np.float32)
    with torch.no_grad():
        for idx, ids, mask in padded_batches(learner, tokens):
            with learner.bank.routed([(k, 0, len(idx))]):
                f = learner._encode(ids, mask, None)
            feats[idx] = f.numpy()
            probs = learner.heads[k](f).softmax(-1)
            log_probs[idx] = probs.clamp_min(1e-12).log().numpy()
            labels[idx] = probs.argmax(-1).numpy()
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
            certainty[idx] = (1 - entropy / np.log(probs.shape[-1])).numpy()
    return feats, labels, certainty, log_probs


def load(run: Path, cache: Path) -> tuple[Stream, dict[str, np.ndarray]]:
    """The run's stream and every feature the variants need (computed once, then read from the cache)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    stream = assemble.stream_source(config["stream"]).load(Path.cwd())
    path = cache / f"{run.name}.npz"
    if path.is_file() and {"logp/0/0", "later/1/0"} <= set(np.load(path)):  # (older caches lack these)
        return stream, dict(np.load(path))
    parts = assemble.parts(config)
    learner = assemble.learner(parts, assemble.backbone(config), config["seed"])
    assert isinstance(learner, AdapterPerTask)
    learner.load(run / "adapters", saved_tasks(run / "adapters"))
    data: dict[str, Any] = {}  # Any: numpy's savez stub reads **kwargs as its allow_pickle flag
    seconds = {"hidden": 0.0, "adapted": 0.0}
    for j, task in enumerate(stream.tasks):
        for split in SPLITS:
            data[f"hidden/{j}/{split}"] = _hidden(learner, getattr(task, split).texts)
        for split in ("train", "validation"):
            data[f"own/{j}/{split}"] = _adapted(learner, getattr(task, split).texts, j)[0]
        for k in range(j):  # a later task's texts through every earlier adapter (what task j can tell adapter k)
            data[f"later/{j}/{k}"] = _adapted(learner, task.validation.texts, k)[0]
        start = time.perf_counter()
        _hidden(learner, task.test.texts)
        seconds["hidden"] += time.perf_counter() - start
        start = time.perf_counter()
        for k in range(len(stream.tasks)):
            adapted = _adapted(learner, task.test.texts, k)
            data[f"feat/{j}/{k}"], data[f"label/{j}/{k}"], data[f"cert/{j}/{k}"], data[f"logp/{j}/{k}"] = adapted
        seconds["adapted"] += (time.perf_counter() - start) / len(stream.tasks)
        print(f"  features of task {j + 1}/{len(stream.tasks)} done", flush=True)
    queries = sum(len(t.test) for t in stream.tasks)
    data.update({f"ms/{k}": np.array([1e3 * v / queries]) for k, v in seconds.items()})
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return stream, data


def _layer(data, j: int, split: str, layers: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([data[f"hidden/{j}/{split}"][k] for k in layers], axis=1)


def frozen_scores(stream: Stream, data, layers: tuple[int, ...], shrinkage: float = 0.05) -> tuple[list, float, float]:
    """Per test set, ``[n, T]`` prototype task scores on frozen ``layers``; fit seconds; ms per query."""
    stats = ClassStatistics(shrinkage)
    start = time.perf_counter()
    for j, task in enumerate(stream.tasks):
        stats.add(j, _layer(data, j, "train", layers), task.train.labels, len(task.labels))
    fit = time.perf_counter() - start
    tests = [_layer(data, j, "test", layers) for j in range(len(stream.tasks))]
    start = time.perf_counter()
    scores = [stats.task_scores(stats.class_scores(x, "mahalanobis"), len(stream.tasks)) for x in tests]
    ms = 1e3 * (time.perf_counter() - start) / sum(len(x) for x in tests)
    return scores, fit, ms


def adapted_scores(stream: Stream, data, shrinkage: float) -> list[np.ndarray]:
    """Per test set, ``[n, T]``: minus the Mahalanobis distance of each query's adapted features (adapter k) to
    task k's nearest class mean, under task k's own covariance of its adapted training features."""
    T = len(stream.tasks)
    scores = [np.empty((len(t.test), T)) for t in stream.tasks]
    for k, task in enumerate(stream.tasks):
        stats = ClassStatistics(shrinkage)
        stats.add(k, data[f"own/{k}/train"], task.train.labels, len(task.labels))
        for j in range(T):
            scores[j][:, k] = stats.class_scores(data[f"feat/{j}/{k}"], "mahalanobis").max(1)
    return scores


def earlier_space_routes(stream: Stream, data, first: list[np.ndarray], top: int, shrinkage: float) -> list:
    """Among each query's ``top`` first-stage tasks, the task of the best class by a linear discriminant in the
    *earliest* candidate's adapted space, over every candidate's classes. That adapter saw the later tasks'
    texts once they arrived (here: their validation texts), so their class means in its space are known; the
    covariance is that of its own training features. Whether an adapter trained on its own task separates
    it from the tasks that came after it."""
    T, routes = len(stream.tasks), []
    spaces = []  # per adapter e: LDA weights and biases of the classes of tasks e..T-1 in its space, their tasks
    for e, task in enumerate(stream.tasks):
        own, labels = data[f"own/{e}/train"].astype(np.float64), task.train.labels
        means = [np.stack([own[labels == c].mean(0) for c in range(len(task.labels))])]
        spread = own - means[0][labels]
        cov = spread.T @ spread / len(own)
        cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
        owners = [np.full(len(task.labels), e)]
        for b in range(e + 1, T):
            later, y = data[f"later/{b}/{e}"].astype(np.float64), stream.tasks[b].validation.labels
            means.append(np.stack([later[y == c].mean(0) for c in range(len(stream.tasks[b].labels))]))
            owners.append(np.full(len(stream.tasks[b].labels), b))
        weights = np.concatenate(means) @ np.linalg.inv(cov)  # LDA: score_c(x) = w_c . x - w_c . mu_c / 2
        spaces.append((weights, -0.5 * (weights * np.concatenate(means)).sum(1), np.concatenate(owners)))
    for j, s1 in enumerate(first):
        candidates = np.argsort(-s1, axis=1)[:, :top]
        route = np.empty(len(s1), np.int64)
        for q, chosen in enumerate(candidates):
            weights, bias, owners = spaces[chosen.min()]
            score = weights @ data[f"feat/{j}/{chosen.min()}"][q].astype(np.float64) + bias
            route[q] = owners[np.where(np.isin(owners, chosen), score, -np.inf).argmax()]
        routes.append(route)
    return routes


def evaluate(stream: Stream, data, routes: list[np.ndarray]) -> tuple[float, float, float]:
    """Router accuracy, routed ACC and oracle ACC after the last task (means over tasks, as R's last row)."""
    router, routed, oracle = [], [], []
    for j, task in enumerate(stream.tasks):
        labels = np.stack([data[f"label/{j}/{k}"] for k in range(len(stream.tasks))], axis=1)
        chosen = labels[np.arange(len(task.test)), routes[j]]
        router.append(np.mean(routes[j] == j))
        routed.append(np.mean((routes[j] == j) & (chosen == task.test.labels)))
        oracle.append(np.mean(data[f"label/{j}/{j}"] == task.test.labels))
    return float(np.mean(router)), float(np.mean(routed)), float(np.mean(oracle))


def rerank(first: list[np.ndarray], second: list[np.ndarray], top: int, weight: float) -> list[np.ndarray]:
    """Among each query's ``top`` first-stage tasks, the best of ``weight`` * second + first (both as given)."""
    routes = []
    for s1, s2 in zip(first, second):
        candidates = np.argsort(-s1, axis=1)[:, :top]
        rows = np.arange(len(s1))[:, None]
        combined = weight * s2[rows, candidates] + s1[rows, candidates]
        routes.append(candidates[np.arange(len(s1)), combined.argmax(1)])
    return routes


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def ridge_study(stream: Stream, data, layers: tuple[int, ...], oracle: float) -> None:
    """The ridge learner and ``router=ridge`` on the same frozen features, and ridge + the adapters' own
    probabilities over the ridge's top 3 tasks (k = 3, T = 0.1, w = 0.25: chosen on clinc150_intents'
    validation splits, seed 0)."""
    T = len(stream.tasks)
    router = RidgeRouter(layers=layers)

    def inputs(j: int, split: str, labels: np.ndarray) -> RouterInputs:
        x = _layer(data, j, split, layers)
        return RouterInputs(len(x), lambda pooling, chosen: x, lambda k: np.zeros(len(x)), labels=labels)

    start = time.perf_counter()
    for j, task in enumerate(stream.tasks):
        router.add_task(j, task, inputs(j, "train", task.train.labels), inputs(j, "validation", task.validation.labels))
    fit = time.perf_counter() - start
    tests = [_layer(data, j, "test", layers) for j in range(T)]
    start = time.perf_counter()
    scores = [router.ridge.scores(x) for x in tests]
    ms = 1e3 * (time.perf_counter() - start) / sum(len(x) for x in tests)
    first = np.searchsorted(router.class_task, np.arange(T))  # each task's first class column
    right = [s.argmax(1) == first[j] + t.test.labels for j, (s, t) in enumerate(zip(scores, stream.tasks))]
    given = [
        s[:, first[j] : first[j] + len(t.labels)].argmax(1) == t.test.labels
        for j, (s, t) in enumerate(zip(scores, stream.tasks))
    ]
    owners = [router.class_task[s.argmax(1)] for s in scores]
    learner = (np.mean([np.mean(o == j) for j, o in enumerate(owners)]), np.mean([r.mean() for r in right]), oracle)
    _row("ridge learner (one head, no adapters)", learner, ms)
    for rule in ("max", "sum"):
        router.rule = rule
        tasks = [router.task_scores(s) for s in scores]
        top2, top3 = (
            np.mean(np.concatenate([np.any(np.argsort(-t, 1)[:, :k] == j, axis=1) for j, t in enumerate(tasks)]))
            for k in (2, 3)
        )
        _row(f"ridge router, rule={rule}", evaluate(stream, data, [t.argmax(1) for t in tasks]), ms, top2, top3)
    router.rule = "max"
    mixed = []
    for j, s in enumerate(scores):
        ridge = _log_softmax(s / 0.1)
        best = np.full((len(s), T), -np.inf)
        for k in range(T):
            columns = ridge[:, first[k] : first[k] + data[f"logp/{j}/{k}"].shape[1]]
            best[:, k] = (columns + 0.25 * data[f"logp/{j}/{k}"]).max(1)
        top = np.argsort(-router.task_scores(s), 1)[:, :3]
        keep = np.zeros_like(best, dtype=bool)
        np.put_along_axis(keep, top, True, 1)
        mixed.append(np.where(keep, best, -np.inf).argmax(1))
    _row("ridge top-3 + 0.25 x adapters' log-probs", evaluate(stream, data, mixed), ms)
    tasks = [router.task_scores(s) for s in scores]
    for k in (2, 3):
        routes = earlier_space_routes(stream, data, tasks, k, 0.3)
        _row(f"ridge top-{k}, earliest candidate's adapted space", evaluate(stream, data, routes), ms)
    state = sum(v.nbytes for v in router.state_dict().values()) / 2**20
    print(
        f"(ridge: dim {router.dim}, lambda {router.ridge.lam:g}, fit {fit / T:.1f} s per task, state {state:.1f} MB; "
        f"the ridge learner with the task given: {100 * np.mean([g.mean() for g in given]):.2f}. The combined rule's "
        "router acc counts the task of the class it chose; it runs 3 adapters per query)"
    )


def study(run: Path, cache: Path) -> None:
    stream, data = load(run, cache)
    depth = data["hidden/0/test"].shape[0] - 1
    T = len(stream.tasks)
    print(f"\n## {stream.name}: {T} tasks, {sum(len(t.test) for t in stream.tasks)} test queries ({run})")
    print(f"{'router':44} {'router acc':>10} {'ACC':>7} {'gap':>6} {'top-2':>6} {'top-3':>6} {'ms/query':>9}")
    layer_sets = {
        "last": (depth,),
        f"[{depth - 2}..{depth}]": tuple(range(depth - 2, depth + 1)),
        f"[2..{depth}]": tuple(range(2, depth + 1)),
        f"[1..{depth}]": tuple(range(1, depth + 1)),
    }
    firsts = {}
    for name, layers in layer_sets.items():
        scores, _, ms = frozen_scores(stream, data, layers)
        firsts[name] = (scores, ms)
        routes = [s.argmax(1) for s in scores]
        top2, top3 = (
            np.mean(np.concatenate([np.any(np.argsort(-s, 1)[:, :k] == j, axis=1) for j, s in enumerate(scores)]))
            for k in (2, 3)
        )
        _row(f"prototype, layers {name}", evaluate(stream, data, routes), ms, top2, top3)
    certainty = [np.stack([data[f"cert/{j}/{k}"] for k in range(T)], axis=1) for j in range(T)]
    _row("entropy (every adapter's head)", evaluate(stream, data, [c.argmax(1) for c in certainty]), float("nan"))
    start = time.perf_counter()
    second = adapted_scores(stream, data, 0.05)
    stage2_ms = 1e3 * (time.perf_counter() - start) / sum(len(t.test) for t in stream.tasks) / T
    hidden = data["hidden/0/test"].shape[2]
    for name in (f"[2..{depth}]", "last"):
        scores, ms = firsts[name]
        dims = hidden * len(layer_sets[name])  # squared distances grow with the dimension: compare per dimension
        for top in (2, 3):
            _row(
                f"+ top-{top} by adapted Mahalanobis ({name})",
                evaluate(stream, data, rerank(scores, second, top, 1e9)),
                ms + top * stage2_ms,
            )
            for weight in (1.0, 2.0):
                first = [s / dims for s in scores]
                routes = rerank(first, [s / hidden for s in second], top, weight)
                _row(
                    f"+ top-{top} frozen + {weight:g} x adapted ({name})",
                    evaluate(stream, data, routes),
                    ms + top * stage2_ms,
                )
        _row(f"+ top-2 by head certainty ({name})", evaluate(stream, data, rerank(scores, certainty, 2, 1e9)), ms)
    ridge_study(
        stream,
        data,
        layer_sets[f"[2..{depth}]"],
        evaluate(stream, data, [np.full(len(t.test), j) for j, t in enumerate(stream.tasks)])[2],
    )
    print(
        f"(cost per query: frozen backbone pass {float(data['ms/hidden'][0]):.2f} ms, one adapter pass "
        f"{float(data['ms/adapted'][0]):.2f} ms; the scores above are the routers' own arithmetic: second stage "
        f"{stage2_ms:.3f} ms per candidate. A routed prediction runs the chosen task's adapter anyway, so top-k "
        "re-ranking adds k - 1 adapter passes)"
    )


def _row(
    name: str, result: tuple[float, float, float], ms: float, top2: float = float("nan"), top3: float = float("nan")
) -> None:
    router, routed, oracle = result
    print(
        f"{name:44} {100 * router:10.2f} {100 * routed:7.2f} {100 * (oracle - routed):6.2f} "
        f"{100 * top2:6.2f} {100 * top3:6.2f} {ms:9.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--cache", type=Path, default=Path("runs/router_study"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for run in args.runs:
        study(run, args.cache)


if __name__ == "__main__":
    main()
