#!/usr/bin/env bash
# Fresh machine -> the test suite (everything but tests marked slow; the organism tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .  # lint (pyproject [tool.ruff]: syntax errors and pyflakes) before the tests
python -m pytest -m "not slow" -q "$@"
