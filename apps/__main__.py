"""`python -m apps ROOT [--port N] [--host H]`: serve the dashboard (what `probe dashboard` runs)."""

import argparse

from apps.launch import launch

parser = argparse.ArgumentParser(prog="python -m apps", description="Serve the visblind dashboard over the stores under ROOT.")
parser.add_argument("root")
parser.add_argument("--port", type=int, default=8501)
parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
args = parser.parse_args()
try:
    code = launch(args.root, args.port, args.host)
except (NotADirectoryError, ValueError) as err:
    parser.exit(2, f"error: {err}\n")
raise SystemExit(code)
