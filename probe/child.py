"""Run a long-lived child program (a server) so that stopping the parent stops the child: no process left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM it when the parent dies, even by SIGKILL, which cannot be forwarded."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_child(argv: Sequence[str]) -> int:
    """Run ``argv`` and wait for it; SIGTERM, SIGINT and SIGHUP sent to this process are passed on to the child, and
    this returns only once the child has exited: its exit code (128 + the signal's number when a signal ended it)."""
    proc = subprocess.Popen(list(argv), preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    try:
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: signals cannot be caught here; the child still dies with us (Linux)
        pass
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
