"""What a registered bank costs to store and to serve: bytes per version and per task, the server's cold
start, and requests per second for mixed-task against single-task requests (measured side by side).

    .venv/bin/python scripts/bench_serving.py [--model models:/NAME@ALIAS --tracking-uri URI]
                                              [--requests 30] [--starts 3] [--batch 32]

Without ``--model`` it first trains and registers the README's default experiment (the demo stream
on the packaged MiniLM) into runs/bench_serving/. Then, with ``mlflow models serve --env-manager
local`` on loopback (one worker, the machine's cores):

* storage: the version's files (model folder) in total, its adapters per task, the router state;
* cold start: seconds from launching the server to its first answer (median of ``--starts``);
* throughput: ``--requests`` requests of ``--batch`` texts each, in turn: texts of every task mixed
  (routed), texts of one task (routed), and texts of one task with the ``task`` param (no router);
* under load: ``--load`` mixed requests sent by 1, 4 and 16 clients at once (threads), texts per second
  in total and the ratio to one client (more clients must not be slower in total), and whether every
  answer equals the one the same request got alone;
  the share of texts the model rejected is printed beside each (a rejected text skips its adapter).
  Texts per second are medians over requests; the ratio mixed / single is what the one-resident-backbone
  design promises (mixing tasks in a request costs about nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _train(out: Path) -> tuple[str, str]:
    """The default experiment, registered as the next version of ``bench`` in ``out/mlflow.db``."""
    uri = f"sqlite:///{out.absolute()}/mlflow.db"
    cmd = [
        str(BIN / "continual"),
        "progress=false",
        f"tracking.uri={uri}",
        "tracking.register=bench",
        f"hydra.run.dir={out}/run",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    from continual.tracking.registry import versions

    return f"models:/bench/{versions('bench', uri)[-1].version}", uri


def _serve(model: str, uri: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model,
        "--env-manager",
        "local",
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _post(port: int, body: dict, timeout: float = 600.0) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def _stop(server: subprocess.Popen) -> None:
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(60)


def _storage(model: str, uri: str) -> dict[str, float]:
    import tempfile

    from continual.serving.registry import fetch_bank

    with tempfile.TemporaryDirectory() as scratch:
        bank = fetch_bank(model, uri, Path(scratch), "bench")
        total = sum(p.stat().st_size for p in Path(scratch).rglob("*") if p.is_file())
        adapters = sorted((bank / "adapters").glob("*.safetensors"))
        return {
            "tasks": len(adapters),
            "version_mb": total / 2**20,
            "adapter_mb_per_task": sum(p.stat().st_size for p in adapters) / len(adapters) / 2**20,
            "router_mb": (bank / "router.safetensors").stat().st_size / 2**20,
        }


def _texts(model: str, uri: str) -> dict[str, list[str]]:
    """Test texts of every task of the bank (the demo generator's, or the stream's own files)."""
    import tempfile

    import yaml

    from continual.run import assemble
    from continual.run.checkpoint import Origin
    from continual.serving.registry import fetch_bank

    with tempfile.TemporaryDirectory() as scratch:
        bank = fetch_bank(model, uri, Path(scratch), "bench")
        config = yaml.safe_load((bank / "config.yaml").read_text())
        stream = assemble.stream_source(config["stream"]).load(Path(Origin.load(bank).launch_dir))
    return {task.name: list(task.test.texts) for task in stream.tasks}


def _load(port: int, texts: dict[str, list[str]], requests: int, batch: int) -> dict[int, tuple[float, bool]]:
    """Texts per second in total when ``requests`` mixed requests come from 1, 4 and 16 clients at once, and
    whether every answer equals the one its request got alone."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    pool_of_texts = [t for values in texts.values() for t in values]
    rng = random.Random(0)
    bodies = [{"inputs": rng.sample(pool_of_texts, batch)} for _ in range(requests)]
    alone = [_post(port, body) for body in bodies]
    out = {}
    for clients in (1, 4, 16):
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            answers = list(pool.map(lambda body: _post(port, body), bodies))
            seconds = time.perf_counter() - start
        out[clients] = (requests * batch / seconds, answers == alone)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--load", type=int, default=48)
    args = parser.parse_args()
    from continual.tracking.store import free_port

    model, uri = (args.model, args.tracking_uri) if args.model else _train(ROOT / "runs" / "bench_serving")
    storage = _storage(model, uri)
    texts = _texts(model, uri)
    names = list(texts)
    mixed = [texts[names[k % len(names)]][k // len(names)] for k in range(args.batch)]
    single = texts[names[0]][: args.batch]
    bodies: dict[str, dict] = {
        "mixed tasks, routed": {"inputs": mixed},
        "one task, routed": {"inputs": single},
        "one task, task given": {"inputs": single, "params": {"task": names[0]}},
    }
    starts: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name in bodies}
    rejected: dict[str, float] = {}
    under_load: dict[int, tuple[float, bool]] = {}
    for start in range(args.starts):
        port = free_port()
        began = time.perf_counter()
        server = _serve(model, uri, port)
        try:
            _post(port, {"inputs": mixed[:1]})
            starts.append(time.perf_counter() - began)
            if start == 0:
                for _ in range(args.requests):  # interleaved, so that drift hits every kind alike
                    for name, body in bodies.items():
                        t = time.perf_counter()
                        answer = _post(port, body)["predictions"]
                        rates[name].append(len(body["inputs"]) / (time.perf_counter() - t))
                        rejected[name] = sum(r["abstained"] for r in answer) / len(answer)
                under_load = _load(port, texts, args.load, args.batch)
        finally:
            _stop(server)
    print(
        f"bank {model}: {storage['tasks']} tasks, version {storage['version_mb']:.2f} MB, "
        f"adapters {storage['adapter_mb_per_task']:.3f} MB per task, router state {storage['router_mb']:.2f} MB"
    )
    print(f"cold start (launch to first answer): median {statistics.median(starts):.1f} s over {len(starts)} starts")
    base = statistics.median(rates["one task, routed"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(
            f"{name:24s} {med:7.1f} texts/s  {med / args.batch:6.2f} requests/s  "
            f"ratio to one task routed {med / base:.2f}  (rejected {100 * rejected[name]:.0f}% of texts)"
        )
    alone = under_load[1][0]
    for clients, (rate, same) in under_load.items():
        print(
            f"{clients:2d} clients at once      {rate:7.1f} texts/s in total  ratio to one client {rate / alone:.2f}  "
            f"answers {'equal to' if same else 'DIFFERENT from'} each request's alone"
        )


if __name__ == "__main__":
    main()
