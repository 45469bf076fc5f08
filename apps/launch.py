"""Start the dashboard server: `python -m streamlit run apps/dashboard.py` bound to loopback unless asked otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

APP_FILE = Path(__file__).with_name("dashboard.py")


def server_command(root: str | Path, port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """The argv that serves the dashboard over the stores under ``root`` (checked to be a folder)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"dashboard ROOT is not a folder: {root}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE),
            "--server.address", host, "--server.port", str(int(port)), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--", "--root", str(root.resolve())]


def launch(root: str | Path, port: int = 8501, host: str = "127.0.0.1", wait: bool = True) -> subprocess.Popen | int:
    """Serve the dashboard; with ``wait`` block until it stops and return its exit code, else return the process."""
    proc = subprocess.Popen(server_command(root, port, host))
    if not wait:
        return proc
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
