#!/usr/bin/env bash
# Creates .venv (if absent) and installs visblind with its dev extras; CPU torch 2.13 first,
# so no dependency pulls a CUDA build. GPU users: install your own torch build before this.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev]'
