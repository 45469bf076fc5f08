"""`probe dashboard` under SIGTERM / SIGINT / SIGKILL: the Streamlit server it started stops with it, its port is freed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.launch import wait_until_ready


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids + [g for k in kids for g in _children(k)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _start(root: Path) -> tuple[subprocess.Popen, int, list[int]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "probe.cli", "dashboard", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    wait_until_ready(port, proc=proc, timeout=120)
    kids = _children(proc.pid)
    assert len(kids) >= 2, kids  # python -m apps, and the Streamlit server it runs
    return proc, port, kids


def _stop_all(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_stops_the_server(tmp_path, sig):
    proc, port, kids = _start(tmp_path)
    try:
        proc.send_signal(sig)
        proc.wait(timeout=60)  # returns only once the server has stopped
        left = [k for k in kids if _alive(k)]
        assert not left, f"left running after {sig.name}: {left}"
        assert not _port_taken(port), f"port {port} still taken after {sig.name}"
    finally:
        _stop_all(kids)
        if proc.poll() is None:
            proc.kill()


def test_sigkill_of_launcher_stops_the_server(tmp_path):
    """SIGKILL cannot be forwarded: the children are asked to stop when their parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    proc, port, kids = _start(tmp_path)
    try:
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (any(_alive(k) for k in kids) or _port_taken(port)):
            time.sleep(0.3)
        assert not [k for k in kids if _alive(k)]
        assert not _port_taken(port)
    finally:
        _stop_all(kids)
