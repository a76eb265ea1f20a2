#!/usr/bin/env bash
# Create .venv and install continual (editable) with its test tools. Safe to re-run.
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build,
# while torch==2.13.0 takes the CPU wheel these machines keep on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "setup: ready ($(.venv/bin/python -c 'import torch, transformers, mlflow; print(f"torch {torch.__version__}, transformers {transformers.__version__}, mlflow {mlflow.__version__}")'))"
