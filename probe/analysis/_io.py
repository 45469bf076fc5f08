"""Open the inputs of an analysis: an xr.Dataset, a TraceStore or a path to one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from probe.segments import Segment
from probe.vocab import to_str


def as_dataset(obj: Any) -> xr.Dataset:
    """A lazy xr.Dataset from a Dataset, an object with `.dataset`, or a zarr store path."""
    if isinstance(obj, xr.Dataset):
        return obj
    if hasattr(obj, "dataset"):
        return obj.dataset
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.exists():
            raise FileNotFoundError(f"store not found: {path}")
        try:
            from probe.store import NotAStoreError, TraceStore
        except ImportError:
            return xr.open_zarr(path, consolidated=False)
        try:
            return TraceStore.open(path).dataset
        except NotAStoreError:
            # A plain xarray zarr group following docs/store-schema.md (e.g. written by hand).
            return xr.open_zarr(path, consolidated=False)
    raise TypeError(f"expected an xr.Dataset, a TraceStore or a path, got {type(obj).__name__}")


def open_group(obj: Any, group: str) -> xr.Dataset | None:
    """A named zarr group stored inside a store path (or TraceStore), e.g. 'eval' or 'vocab', or None.

    An in-memory Dataset may carry the group as `attrs[group]` instead.
    """
    if hasattr(obj, "path") and not isinstance(obj, (str, Path)):
        obj = obj.path
    if isinstance(obj, (str, Path)) and (Path(obj) / group).exists():
        return xr.open_zarr(Path(obj), group=group, consolidated=False)
    if isinstance(obj, xr.Dataset) and isinstance(obj.attrs.get(group), xr.Dataset):
        return obj.attrs[group]
    return None


def open_eval(obj: Any) -> xr.Dataset | None:
    """The behavioural `eval` group stored inside a store path (or TraceStore), or None.

    Loaded whole (it is small) from one version of the group: a `probe eval --out` replacing it meanwhile made a lazy
    read mix the old metadata with the new chunks ("cannot reshape array of size 200 into shape (524,)").
    """
    path = obj.path if hasattr(obj, "path") and not isinstance(obj, (str, Path)) else obj
    if isinstance(path, (str, Path)) and (Path(path) / "eval").exists():
        return load_whole_group(Path(path), "eval")
    return open_group(obj, "eval")


def load_whole_group(store: Path, group: str, tries: int = 5) -> xr.Dataset:
    """Group `group` of the store loaded into memory from one version of it; StoreError (one line) when it keeps being
    replaced while read, or cannot be read."""
    from probe.store import StoreError

    folder = store / group
    for _ in range(tries):
        before = _version(folder)
        try:
            ds: xr.Dataset | None = xr.open_zarr(store, group=group, consolidated=False).load()
            err: Exception | None = None
        except (ValueError, OSError, KeyError) as caught:  # e.g. the new version's chunks under the old metadata
            ds, err = None, caught
        if before is not None and _version(folder) == before:
            if ds is not None:
                return ds
            raise StoreError(f"group {group!r} of store {store} is unreadable: {str(err).splitlines()[0]}") from None
    raise StoreError(f"group {group!r} of store {store} was replaced by another process while it was read "
                     "(a `probe eval --out` or `--save` into it?): rerun when that has finished")


def _version(folder: Path) -> tuple[int, int] | None:
    """Which copy of a group folder is in place: replacing a group renames a new folder there (a new inode)."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def require(ds: xr.Dataset, *names: str, where: str) -> None:
    """Raise KeyError naming the missing variables an analysis needs."""
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise KeyError(f"{where}: store lacks variable(s) {missing}")


def has(ds: xr.Dataset, *names: str) -> bool:
    """Whether the dataset holds every named variable."""
    return all(n in ds.variables for n in names)


def example_chunks(ds: xr.Dataset) -> list[slice]:
    """Slices along `example` following the dataset's dask chunks (or one slice if eager)."""
    n = ds.sizes["example"]
    sizes: tuple[int, ...] | None = None
    for var in ds.data_vars.values():
        if "example" in var.dims and var.chunks is not None:
            sizes = var.chunks[var.dims.index("example")]
            break
    if sizes is None:
        return [slice(0, n)]
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, start + s))
        start += s
    return out


def segment_code(name: str | int | Segment) -> int:
    """Integer Segment code from a name like 'visual' or a Segment."""
    if isinstance(name, str):
        return int(Segment[name.upper()])
    return int(name)


def lang_of(ds: xr.Dataset) -> np.ndarray:
    """The `lang` coordinate as strings, or 'all' when absent."""
    if "lang" in ds.coords:
        return to_str(ds["lang"].values)
    return np.full(ds.sizes["example"], "all")
