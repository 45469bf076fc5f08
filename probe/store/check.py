"""Find what on disk makes a store unreadable: the first chunk file that does not decode, named with its array and examples.

A corrupt chunk only shows when it is read, deep inside dask/zarr, as an error that names no file ("Zstd decompression
error"). These functions read a store chunk by chunk to say which file it is (`probe info --check`, and the one-line
errors of `probe compare` and the dashboard when a read fails).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from probe.store.schema import InvalidStoreError, LAYOUT_ATTR, StoreError


def _arrays(path: Path) -> list[str]:
    """Arrays of the store (relative folder names): the capture's own first (example, coords, variables), then groups'."""
    found = []
    for meta in sorted(path.rglob("zarr.json")):
        try:
            if json.loads(meta.read_text()).get("node_type") == "array":
                found.append(meta.parent.relative_to(path).as_posix())
        except (OSError, ValueError):
            found.append(meta.parent.relative_to(path).as_posix())  # its metadata itself is unreadable: checked below
    try:
        layout = json.loads(json.loads((path / "zarr.json").read_text())["attributes"][LAYOUT_ATTR])
        first = ["example", *layout.get("example_coords", {}), *layout.get("variables", {})]
    except (OSError, ValueError, KeyError, TypeError):
        first = ["example"]
    return [a for a in first if a in found] + [a for a in found if a not in first]


def _example_ids(path: Path) -> np.ndarray | None:
    import zarr
    from zarr.storage import LocalStore

    try:
        ids = zarr.open_array(LocalStore(path / "example", read_only=True), zarr_format=3)[:]
        return np.array([str(v) for v in ids], dtype=object)
    except Exception:  # the example array itself may be what is damaged
        return None


def _rows(path: Path, name: str, arr, idx: tuple[int, ...]) -> str:
    dims = arr.metadata.dimension_names or ()
    if "/" in name or not dims or dims[0] != "example" or not arr.shape or arr.shape[0] == 0:
        return ""
    lo = idx[0] * arr.chunks[0]
    hi = min(lo + arr.chunks[0], arr.shape[0]) - 1
    ids = _example_ids(path) if name != "example" else None
    if ids is not None and hi < len(ids):
        return f", examples {ids[lo]!r} to {ids[hi]!r} (rows {lo}-{hi})"
    return f", example rows {lo}-{hi}"


def find_unreadable(path: str | os.PathLike, budget_s: float | None = None) -> str | None:
    """One line naming the first chunk file of the store at ``path`` that cannot be read or decoded (with its array and
    the examples it holds), or None when every chunk reads. ``budget_s``: give up after that many seconds (returns a
    line saying so)."""
    import zarr
    from zarr.storage import LocalStore

    path = Path(path)
    start = time.monotonic()
    for name in _arrays(path):
        try:
            arr = zarr.open_array(LocalStore(path / name, read_only=True), zarr_format=3)
        except Exception as err:
            return f"store {path}: array {name!r} has unreadable metadata {name}/zarr.json ({_line(err)})"
        for idx in np.ndindex(*arr.cdata_shape):
            key = arr.metadata.encode_chunk_key(idx)
            if not (path / name / key).is_file():
                continue  # never written: read as the fill value
            try:
                arr.get_block_selection(idx)
            except Exception as err:
                return (f"store {path}: chunk file {name}/{key} (array {name!r}{_rows(path, name, arr, idx)}) cannot be "
                        f"read: {_line(err)}")
            if budget_s is not None and time.monotonic() - start > budget_s:
                return (f"store {path}: reading failed, and no damaged chunk file was found in {budget_s:.0f} s: "
                        f"run `probe info --check {path}` to check every chunk")
    return None


def explain_read_error(err: BaseException, paths: list, budget_s: float | None = 60.0) -> StoreError | None:
    """For an error raised while reading the stores at ``paths``: InvalidStoreError naming the damaged chunk file, or
    None when no store has one (the error is something else). Store errors already one line are left as they are."""
    if isinstance(err, StoreError):
        return None
    for p in paths:
        if p is None or not (Path(p) / "zarr.json").is_file():
            continue
        line = find_unreadable(p, budget_s)
        if line is not None:
            return InvalidStoreError(line)
    return None


def _line(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__
