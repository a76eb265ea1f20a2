"""Which frozen features and distance route CLINC150 domains best? Router accuracy only, no adapters.

    .venv/bin/python scripts/router_study.py [--data ../shared/data/clinc150] [--run RUN_DIR]

Computes the packaged MiniLM's hidden states once for the train and test splits of every
domain (cached in runs/router_study_features.npz), then builds each router variant from the
train features of all ten tasks, task by task as a run would, and prints the final router
accuracy on the test splits (the share of test queries routed to their own domain), plus the
time to fit. With ``--run`` (the output folder of a clinc150_domains run in the default order) the
run's adapters are loaded, every test query's head certainty under every adapter is computed
once (cached next to the features), and the entropy router
is added. Routing after the last task does not depend on the task order for the prototype
router; the classifier router refits on the statistics, so it does not either (up to sampling).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from continual.backbone import Backbone, pool
from continual.routers import ClassifierRouter, EntropyRouter, PrototypeRouter, RouterInputs
from continual.streams import Clinc150Domains
from continual.training import TrainerConfig, eval_batches, iter_padded


def hidden_features(backbone: Backbone, texts, pooling: str) -> np.ndarray:
    """``[layers + 1, n, hidden]``: every hidden state (0 = embeddings) pooled with ``pooling``."""
    tokens = backbone.tokenize(list(texts), 128)
    out = None
    with torch.no_grad():
        for idx, ids, mask in iter_padded(tokens, eval_batches([len(t) for t in tokens], 256), 0, torch.device("cpu")):
            states = backbone.model(
                input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), output_hidden_states=True
            ).hidden_states
            pooled = torch.stack([pool(h, mask, pooling) for h in states]).numpy()
            if out is None:
                out = np.empty((pooled.shape[0], len(tokens), pooled.shape[2]), np.float32)
            out[:, idx] = pooled
    return out


def head_certainty(run: Path, stream, cache: Path) -> dict[str, np.ndarray]:
    """Per test split j, ``[n, T]``: the certainty of every task's head under its own adapter."""
    if cache.is_file():
        return dict(np.load(cache))
    from continual.adapters import BottleneckConfig
    from continual.evaluation import encode_texts
    from continual.learners import AdapterPerTask, saved_tasks

    tasks = saved_tasks(run / "adapters")
    if [t.name for t in tasks] != stream.task_names:
        raise SystemExit(f"{run}: adapters are for {[t.name for t in tasks]}, not {stream.task_names}")
    config = OmegaConf.load(run / "config.yaml")
    learner = AdapterPerTask(
        Backbone.load(),
        BottleneckConfig(**{k: v for k, v in config.adapter.items() if k != "_target_"}),
        TrainerConfig(),
        progress=False,
    )
    learner.load(run / "adapters", tasks)
    out = {}
    for j, task in enumerate(stream.tasks):
        inputs = encode_texts(learner, task.test.texts)
        out[str(j)] = np.stack([inputs.certainty(k) for k in range(len(tasks))], axis=1)
    np.savez(cache, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/clinc150"))
    parser.add_argument("--cache", type=Path, default=Path("runs/router_study_features.npz"))
    parser.add_argument("--run", type=Path, default=None, help="a finished clinc150_domains run folder")
    args = parser.parse_args()

    stream = Clinc150Domains(data_dir=str(args.data)).load()
    if args.cache.is_file():
        cached = dict(np.load(args.cache))
    else:
        backbone = Backbone.load()
        cached = {}
        for pooling in ("mean", "cls"):
            for j, task in enumerate(stream.tasks):
                for split in ("train", "validation", "test"):
                    cached[f"{pooling}/{j}/{split}"] = hidden_features(backbone, getattr(task, split).texts, pooling)
            print(f"features ({pooling}) done", flush=True)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, **cached)

    certainty = head_certainty(args.run, stream, args.cache.with_name("router_study_certainty.npz")) if args.run else {}

    def inputs(j: int, split: str) -> RouterInputs:
        """Task ``j``'s ``split`` as a router sees it, from the cached features (and head certainties)."""
        data = getattr(stream.tasks[j], split)

        def features(pooling, layers):
            states = cached[f"{pooling}/{j}/{split}"]
            return np.concatenate([states[k] for k in layers], axis=1)

        return RouterInputs(len(data), features, lambda k: certainty[str(j)][:, k], labels=data.labels)

    variants = {
        "mahalanobis mean last": lambda: PrototypeRouter(),
        "mahalanobis mean last, shrink 0": lambda: PrototypeRouter(shrinkage=0.0),
        "mahalanobis mean last, shrink .2": lambda: PrototypeRouter(shrinkage=0.2),
        "mahalanobis cls last": lambda: PrototypeRouter(pooling="cls"),
        "cosine mean last (NCM)": lambda: PrototypeRouter(metric="cosine"),
        "euclidean mean last": lambda: PrototypeRouter(metric="euclidean"),
        "mahalanobis mean [-2]": lambda: PrototypeRouter(layers=[-2]),
        "mahalanobis mean [-2,-1]": lambda: PrototypeRouter(layers=[-2, -1]),
        "mahalanobis mean [-3,-2,-1]": lambda: PrototypeRouter(layers=[-3, -2, -1]),
        "mahalanobis mean [1..6]": lambda: PrototypeRouter(layers=[1, 2, 3, 4, 5, 6]),
        "mahalanobis mean [0..6]": lambda: PrototypeRouter(layers=[0, 1, 2, 3, 4, 5, 6]),
        "mahalanobis mean [2..6]": lambda: PrototypeRouter(layers=[2, 3, 4, 5, 6]),
        "classifier mean last": lambda: ClassifierRouter(),
        "classifier mean [-3,-2,-1]": lambda: ClassifierRouter(layers=[-3, -2, -1]),
    }
    if certainty:
        variants.update(
            {
                "entropy": lambda: EntropyRouter(),
            }
        )
    print(f"{'router':36} {'router acc':>10} {'worst task':>24} {'fit s':>7}")
    for name, make in variants.items():
        router = make()
        start = time.perf_counter()
        for j, task in enumerate(stream.tasks):
            router.add_task(j, task, inputs(j, "train"), inputs(j, "validation"))
        fit = time.perf_counter() - start
        acc = [float(np.mean(router.route(inputs(j, "test")).tasks == j)) for j, t in enumerate(stream.tasks)]
        worst = int(np.argmin(acc))
        print(
            f"{name:36} {100 * np.mean(acc):10.2f} {stream.tasks[worst].name + f' {100 * acc[worst]:.1f}':>24} "
            f"{fit:7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
