"""Where `probe eval --out` saves: checked and locked before any work, so a refusal never comes after the evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from probe.store import NotAStoreError, TraceStore
from probe.store import lock as store_lock


@contextmanager
def eval_output(out: str | Path | None) -> Iterator[None]:
    """Hold the lock of the store an evaluation will be saved into from now until the block ends.

    A store another process is writing (a capture) is refused at once; so is a path that is neither a TraceStore, a
    zarr folder, nor new or empty (the evaluation would be written into a user's folder). None: nothing to check.
    """
    if out is None:
        yield
        return
    out = Path(out)
    if TraceStore.exists(out):
        lock = store_lock.acquire(out, "save an evaluation (probe eval --out)")
        try:
            yield
        finally:
            store_lock.release(lock)
        return
    if out.exists() and not (out / "zarr.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise NotAStoreError(f"{out} exists and is neither a TraceStore nor a zarr folder; refusing to save the "
                             "evaluation there (give another --out)")
    yield
