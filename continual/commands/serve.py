"""``continual serve MODEL_URI``: a registered version over HTTP with ``mlflow models serve``, set up as it needs.

``mlflow models serve --env-manager local`` starts ``uvicorn`` from ``PATH`` and reads the registry from
``MLFLOW_TRACKING_URI``; run with the venv's python but without its ``bin/`` on ``PATH`` it fails after
the model has loaded. This door sets both, checks the version exists before anything starts, binds to
127.0.0.1 unless told otherwise, and passes the request limits (:mod:`continual.serving.requests`) on.
The process becomes the server (``exec``): Ctrl-C and SIGTERM stop it directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from continual.commands.cmdline import subcommand_parser
from continual.errors import ContinualError
from continual.serving.requests import VARIABLES
from continual.tracking.registry import resolve_version
from continual.tracking.store import DEFAULT_URI, normalise_uri

USAGE = """usage: continual serve MODEL_URI [--port 5001] [--host 127.0.0.1] [--workers 1] [--tracking-uri URI]
                       [--max-texts 1000] [--max-chars 4000]

Serves registered version MODEL_URI (models:/NAME/VERSION or models:/NAME@alias, read from --tracking-uri,
default the embedded store runs/mlflow.db) with `mlflow models serve --env-manager local` on
http://HOST:PORT/invocations (POST {"inputs": ["a text", ...], "params": {...}}). A request holds at most
--max-texts texts of at most --max-chars characters each (more: HTTP 400, one line)."""


def main(argv: list[str]) -> None:
    parser = subcommand_parser("serve", USAGE)
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    parser.add_argument("--max-texts", type=int)
    parser.add_argument("--max-chars", type=int)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536 or args.workers < 1:
        raise ContinualError("continual serve: --port must be in 1..65535 and --workers at least 1")
    resolve_version(args.tracking_uri, args.model)  # one line if it names no version, before the server starts
    uri = normalise_uri(args.tracking_uri, Path.cwd())  # for the server, which starts elsewhere
    limits = {VARIABLES["max_texts"][0]: args.max_texts, VARIABLES["max_chars"][0]: args.max_chars}
    bin_dir = str(Path(sys.executable).parent)  # uvicorn, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update({name: str(value) for name, value in limits.items() if value is not None})
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model, "--env-manager", "local"]
    command += ["-h", args.host, "-p", str(args.port), "-w", str(args.workers)]
    print(f"serving {args.model} from {uri} at http://{args.host}:{args.port}/invocations", file=sys.stderr, flush=True)
    os.execvpe(sys.executable, command, env)
