"""Wall time of one 4-job multirun with the basic (sequential) launcher vs the joblib launcher.

    .venv/bin/python scripts/bench_sweeps.py [--data ../shared/data/clinc150] [--repeats 1]

Both sweeps run the same 4 jobs (seeds 0-3) of a short clinc150_domains experiment (3 domains,
40 train / 20 test examples per intent, 1 epoch, packaged MiniLM) into fresh sqlite stores in a
temporary folder. basic runs the jobs one after another with all cores; joblib runs ``--jobs``
processes at once with cores / jobs torch threads each. Prints each wall time (median over
``--repeats``, alternating) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(folder: Path, data: Path, launcher: list[str]) -> float:
    args = [
        sys.executable,
        "-m",
        "continual",
        "-m",
        "stream=clinc150_domains",
        f"stream.data_dir={data}",
        "stream.domains=[banking,travel,home]",
        "stream.max_per_class=40",
        "stream.max_eval_per_class=20",
        "trainer.epochs=1",
        "progress=false",
        "seed=0,1,2,3",
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
        f"hydra.sweep.dir={folder}/sweep",
        *launcher,
    ]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(launcher)}):\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "clinc150")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    launchers = {
        "basic": [f"threads={cores}"],
        "joblib": [
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={args.jobs}",
            f"threads={max(1, cores // args.jobs)}",
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in launchers}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, launcher in launchers.items():
                times[name].append(sweep(Path(tmp) / f"{name}{r}", args.data.resolve(), launcher))
                print(f"{name} repeat {r}: {times[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"\n4 jobs, {cores} CPUs: basic {median['basic']:.1f} s, joblib ({args.jobs} at once) "
        f"{median['joblib']:.1f} s; joblib speed-up {median['basic'] / median['joblib']:.2f}x"
    )


if __name__ == "__main__":
    main()
