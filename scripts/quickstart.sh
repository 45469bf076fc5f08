#!/usr/bin/env bash
# Fresh machine -> the organism quickstart: train base + Korean fine-tune, evaluate, capture, compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
train quickstart --out "${1:-runs/quickstart}"
