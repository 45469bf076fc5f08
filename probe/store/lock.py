"""One writer per store: an OS-level lock (flock) on the store's own folder.

The operating system releases a flock when its holder exits, however it exits (SIGKILL included),
so a lock left by a crashed writer is stale by construction: the next writer simply gets it.
The lock is taken on the store directory itself rather than on a file inside it: a directory
keeps its inode when the store is built in a temporary folder and renamed into place (so the lock
is held from the first byte), and zarr would warn about any non-zarr file inside the hierarchy.
Within one process the lock is re-entrant (a capture that writes its vocab group while holding it).
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from probe.store.schema import StoreError

_HELD: dict[str, tuple["StoreLock", int]] = {}  # realpath of the store folder -> (lock, depth) in this process
_GUARD = threading.Lock()


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class StoreLock:
    """flock on a store folder, non-blocking: `acquire()` raises StoreLockedError when another process holds it."""

    def __init__(self, folder: str | os.PathLike, purpose: str = "write", *, shown_as: str | os.PathLike | None = None,
                 what: str = "store") -> None:
        self.what = what  # the noun before the folder in the refusal ("store", or "" for a results folder)
        self.folder = Path(folder)
        self.purpose = purpose
        self.shown_as = Path(shown_as) if shown_as is not None else self.folder
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"{self.what + ' ' if self.what else ''}{self.shown_as} is being written by another process; "
                f"wait for it to finish or write to another path (refused: {self.purpose})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: the OS drops the lock with the process anyway
            pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def moved_to(self, folder: str | os.PathLike) -> None:
        """The locked folder was renamed to `folder` (the lock stays with the directory)."""
        self.folder = self.shown_as = Path(folder)


def acquire(folder: str | os.PathLike, purpose: str) -> StoreLock:
    """Take the store's lock for this process (re-entrant); pair with `release`."""
    key = os.path.realpath(folder)
    with _GUARD:
        if key in _HELD:
            lock, depth = _HELD[key]
            _HELD[key] = (lock, depth + 1)
            return lock
        lock = StoreLock(folder, purpose).acquire()
        _HELD[key] = (lock, 1)
        return lock


def release(lock: StoreLock) -> None:
    """Give back one `acquire`; the flock goes when the last one is given back."""
    with _GUARD:
        for key, (held, depth) in list(_HELD.items()):
            if held is lock:
                if depth > 1:
                    _HELD[key] = (held, depth - 1)
                    return
                del _HELD[key]
        lock.release()


def adopt(lock: StoreLock, folder: str | os.PathLike) -> None:
    """Register a lock taken on a folder that has since been renamed to `folder` (a store built in a temporary folder)."""
    lock.moved_to(folder)
    with _GUARD:
        _HELD[os.path.realpath(folder)] = (lock, 1)


@contextmanager
def store_lock(folder: str | os.PathLike, purpose: str) -> Iterator[StoreLock]:
    """Hold the store's lock for a block."""
    lock = acquire(folder, purpose)
    try:
        yield lock
    finally:
        release(lock)


def held_elsewhere(folder: str | os.PathLike) -> bool:
    """Whether another process is writing the store at `folder` now (its lock is held, not by this process)."""
    with _GUARD:
        if os.path.realpath(folder) in _HELD:
            return False
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared probe: taken and given back at once
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False
