"""Start the dashboard server: `python -m streamlit run apps/dashboard.py` bound to loopback unless asked otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from probe.child import run_child

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
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--server.fileWatcherType", "none",
            "--", "--root", str(root.resolve())]


def launch(root: str | Path, port: int = 8501, host: str = "127.0.0.1", wait: bool = True) -> subprocess.Popen | int:
    """Serve the dashboard; with ``wait`` block until it stops and return its exit code, else return the process.

    With ``wait``, SIGTERM/SIGINT/SIGHUP sent to this process are passed to the server, and this returns only once the
    server has stopped (its port free), so ending the launcher never leaves the server running."""
    argv = server_command(root, port, host)
    if not wait:
        return subprocess.Popen(argv)
    return run_child(argv)


def wait_until_ready(port: int, host: str = "127.0.0.1", timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Block until the server answers its health check; RuntimeError (one line) on timeout or early exit."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/_stcore/health"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"dashboard server exited with code {proc.returncode} before answering on port {port}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"dashboard server did not answer {url} within {timeout:.0f} s")
