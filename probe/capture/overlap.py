"""One background thread for a capture's host work, so the store write of batch k runs while batch k+1 computes.

Jobs run one at a time, in the order given (the store keeps its one writer and its order). At most one job
waits while one runs: the loop is never more than two batches ahead of the store. An error in a job is
raised in the submitting thread at its next `submit` or at `finish`; `stop` (on the way out after an error or
an interrupt) lets the running job end and drops the waiting one, so nothing writes after the caller has
released the store. A kill at any moment leaves the store as a kill of the serial loop would: each append
commits whole examples or nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_DONE = object()


class Behind:
    """Runs submitted jobs in a background thread, in order; a context manager (stops on error, finishes otherwise)."""

    def __init__(self, name: str = "visblind-store-writer") -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _DONE:
                return
            if self._error is None and not self._stopped:
                try:
                    job()
                except BaseException as err:  # noqa: BLE001 - handed to the submitting thread
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            self._stopped = True
            raise err

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue `job` (waits while another job is already waiting); raises an earlier job's error first."""
        self._raise()
        self._jobs.put(job)

    def finish(self) -> None:
        """Wait for every job; raise the first error any of them had."""
        if self._thread.is_alive():
            self._jobs.put(_DONE)
            self._thread.join()
        self._raise()

    def stop(self) -> None:
        """Let the running job end, drop the waiting one, end the thread (errors of the jobs are dropped)."""
        self._stopped = True
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive():
            self._jobs.put(_DONE)
            self._thread.join()

    def __enter__(self) -> "Behind":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.stop()
