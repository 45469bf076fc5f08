#!/usr/bin/env bash
# Creates .venv (if absent) and installs visblind with its dev, apps (dashboard) and tl (TransformerLens) extras; CPU torch 2.13
# first, so no dependency pulls a CUDA build. GPU users: install your own torch build before this.
# The dashboard's browser tests need Chromium and its driver: installed with apt-get when missing and root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev,apps,tl,figures]'

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    :
elif [ "$(id -u)" -ne 0 ]; then
    echo "setup: chromium/chromedriver not found and not root: skipping apt; the dashboard's browser tests" \
         "will be skipped (install with: sudo apt-get install chromium chromium-driver)" >&2
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: chromium/chromedriver not found and no apt-get: the dashboard's browser tests will be skipped" >&2
else
    echo "setup: installing chromium and chromium-driver with apt-get (dashboard browser tests)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
        echo "setup: apt-get could not install chromium/chromium-driver: the dashboard's browser tests will be skipped" >&2
    fi
fi
