"""Logging overhead per run: the embedded sqlite store vs an MLflow tracking server, side by side.

    .venv/bin/python scripts/bench_tracking.py [--repeats 5] [--tasks 10]

Replays what one continual run logs (the flattened config as params; after each of ``--tasks``
steps the per-task accuracy/router/oracle metrics and training losses; the artifacts of a small
run folder at the end) through ``MLflowTracker``, against a fresh sqlite store and against a local
``mlflow server`` on that kind of store (started here, on loopback). Prints the median seconds
per run for each and their ratio; the runs alternate so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from continual.tracking import MLflowTracker
from continual.tracking.store import serve


def replay(tracker: MLflowTracker, tasks: int, folder: Path) -> None:
    params = {
        "trainer": {"epochs": 1, "lr": 0.005, "batch_size": 32},
        "router": {"metric": "mahalanobis"},
        "stream": {"name": "bench", "tasks": [f"t{k}" for k in range(tasks)]},
        "seed": 0,
    }
    tracker.log_params(params)
    rng = np.random.default_rng(0)
    step = 0
    for i in range(tasks):
        losses = []
        for _ in range(40):  # training losses, every log_every steps, logged together once the task is done
            step += 10
            losses.append(({f"train_loss/t{i}": float(rng.random()), "train_loss": float(rng.random())}, step))
        tracker.log_history(losses)
        row = {
            f"{kind}/t{j}": float(rng.random()) for j in range(i + 1) for kind in ("acc", "router_acc", "oracle_acc")
        }
        row.update(
            avg_acc=0.9,
            bwt=0.0,
            forgetting=0.0,
            learning_acc=0.9,
            router_acc=1.0,
            oracle_avg_acc=0.9,
            train_seconds=10.0,
            eval_seconds=1.0,
        )
        tracker.log_metrics(row, step=i)
    tracker.log_artifact(folder)
    tracker.finish("FINISHED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "run"
        folder.mkdir()
        for k in range(args.tasks):  # artifact-sized files: adapters ~0.5 MB, a csv, a png-sized blob
            (folder / f"{k:02d}_adapter.safetensors").write_bytes(np.random.bytes(480_000))
        (folder / "accuracy_matrix.csv").write_text("a,b\n0.9,\n0.9,0.8\n")
        (folder / "accuracy_matrix.png").write_bytes(np.random.bytes(60_000))

        server, server_uri = serve(f"sqlite:///{root}/server.db", root / "server-artifacts", workers=2)
        try:
            uris = {"sqlite": f"sqlite:///{root}/local.db", "server": server_uri}
            times: dict[str, list[float]] = {name: [] for name in uris}
            for uri in uris.values():  # warm-up: creates stores and experiments
                replay(MLflowTracker(uri, "bench", launch_dir=root), 1, folder)
            for _ in range(args.repeats):
                for name, uri in uris.items():
                    start = time.perf_counter()
                    replay(MLflowTracker(uri, "bench", launch_dir=root), args.tasks, folder)
                    times[name].append(time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait(timeout=30)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"one run's logging ({args.tasks} tasks, {args.repeats} repeats, medians)")
    for name, seconds in median.items():
        print(f"  {name:7} {seconds:7.2f} s")
    print(f"server / sqlite: {median['server'] / median['sqlite']:.2f}")


if __name__ == "__main__":
    main()
