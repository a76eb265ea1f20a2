#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the static checks and the tests: what CI runs on a clean clone.
#   bash scripts/test.sh          ruff (lint + format), mypy, the docs site (strict), the default test suite
#                                 (CONTINUAL_TEST_WORKERS=1 runs it in one process)
#   bash scripts/test.sh slow     the slow set: packaged MiniLM, real servers, browser, PostgreSQL, launchers
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "ruff: lint"; .venv/bin/ruff check continual tests scripts
echo "ruff: format"; .venv/bin/ruff format --check continual tests scripts
echo "mypy"; .venv/bin/mypy
echo "docs"; NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet -d "$(mktemp -d)/site"
if [ "${1:-}" = "slow" ]; then
  .venv/bin/python -m pytest -m slow
else  # two workers (one torch thread each, tests/conftest.py); a file's tests stay on one worker
  .venv/bin/python -m pytest -n "${CONTINUAL_TEST_WORKERS:-2}" --dist loadfile
fi
