"""TraceStoreWriter: create or resume a store and append examples crash-safely.

Crash safety: every zarr key is written atomically (zarr's LocalStore writes a temporary file
and renames it), each flush writes its data first and then rewrites the group attributes with
the new committed example count (one atomic rename). Readers and resumed writers only trust
that count: whatever an interrupted append left past it is invisible and cut off on resume.
A new store is built in a hidden sibling folder and renamed into place, so a store path either
holds a complete empty store or nothing.

Speed: appended examples are held in memory until they complete a block of
``examples_per_chunk`` (or exceed ``max_buffer_bytes``), so zarr writes whole chunks instead of
re-reading and re-compressing a growing chunk at every batch. A crash loses at most the pending
block, which a resumed capture recomputes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from probe.store import lock as _lock
from probe.store.reader import TraceStore, check_schema_version, read_group_attrs
from probe.store.schema import (
    COMMITTED_ATTR,
    DEFAULT_MAX_CHUNK_BYTES,
    LAYOUT_ATTR,
    MARKER_ATTR,
    SCHEMA_VERSION,
    SKIPPED_ATTR,
    Layout,
    NotAStoreError,
    StoreError,
    StoreMismatchError,
    VariableSpec,
    chunk_shape,
    first_difference,
    identity_attrs,
    normalise_coord_values,
)

_EXAMPLE_COORD_FILL = {"str": "", "bool": False, "int64": -1, "float64": float("nan")}
_EXAMPLE_COORD_NUMPY = {"str": np.dtypes.StringDType(), "bool": np.dtype(bool), "int64": np.dtype("int64"),
                        "float64": np.dtype("float64")}


class TraceStoreWriter:
    """Writes examples into a TraceStore at ``path``, creating it or resuming one with the same layout and attrs.

    ``variables``: name -> VariableSpec (dims start with ``example``); ``coords``: values of labelled
    non-example dims (layer, head, segment, query, position ...); ``sizes``: lengths of unlabelled dims
    (feature, d_head, vtoken ...); ``example_coords``: per-example coordinate names (dtype ``str``) or a
    name -> dtype mapping (``str``, ``bool``, ``int64``, ``float64``; ``image_dependent`` defaults to bool).
    Appends are committed in whole blocks of ``examples_per_chunk`` (or when more than
    ``max_buffer_bytes`` are pending; 0 commits every append); ``close()`` commits the rest.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        variables: Mapping[str, VariableSpec],
        coords: Mapping[str, Sequence] | None = None,
        sizes: Mapping[str, int] | None = None,
        example_coords: Iterable[str] | Mapping[str, str] = (),
        attrs: Mapping[str, Any] | None = None,
        examples_per_chunk: int = 64,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        max_buffer_bytes: int = 256 * 2**20,
    ) -> None:
        layout = Layout(
            dict(variables),
            {d: normalise_coord_values(d, v) for d, v in (coords or {}).items()},
            {d: int(n) for d, n in (sizes or {}).items()},
            _example_coord_dtypes(example_coords),
            int(examples_per_chunk),
            int(max_chunk_bytes),
        )
        attrs = _json_attrs(attrs or {})
        path = Path(path)
        lock = None if TraceStore.exists(path) else _create(path, layout, attrs)
        if lock is None:  # the store was there (or another process created it just now)
            existing = read_group_attrs(path)
            if existing[LAYOUT_ATTR] != layout.to_json():
                diff = first_difference(json.loads(existing[LAYOUT_ATTR]), json.loads(layout.to_json()))
                raise StoreMismatchError(f"store {path} exists with a different layout ({diff}); use another path")
            check_schema_version(path)
            _check_identity(path, existing, attrs)
            lock = _lock.acquire(path, "capture")
        self._lock = lock
        try:
            self._attach(path, max_buffer_bytes)
        except BaseException:
            self.abandon()
            raise

    @classmethod
    def create(cls, path: str | os.PathLike, **kwargs: Any) -> "TraceStoreWriter":
        """Same as the constructor: create the store, or reopen an identical one to resume it."""
        return cls(path, **kwargs)

    @classmethod
    def resume(cls, path: str | os.PathLike, *, attrs: Mapping[str, Any] | None = None,
               max_buffer_bytes: int = 256 * 2**20) -> "TraceStoreWriter":
        """Reopen an existing store for appending; if ``attrs`` are given, they must match the store's identity."""
        path = Path(path)
        existing = read_group_attrs(path)
        check_schema_version(path)
        if attrs is not None:
            _check_identity(path, existing, _json_attrs(attrs))
        self = cls.__new__(cls)
        self._lock = _lock.acquire(path, "capture")
        try:
            self._attach(path, max_buffer_bytes)
        except BaseException:
            self.abandon()
            raise
        return self

    def _attach(self, path: Path, max_buffer_bytes: int) -> None:
        """Open the group, cut every array back to the committed count, drop leftover temporary files."""
        if max_buffer_bytes < 0:
            raise ValueError(f"max_buffer_bytes must be >= 0, got {max_buffer_bytes}")
        self.path = path
        self._max_buffer = max_buffer_bytes
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_ids: set[str] = set()
        for leftover in path.rglob("*.partial"):
            leftover.unlink(missing_ok=True)
        self._group = zarr.open_group(LocalStore(path), mode="r+", zarr_format=3)
        attrs = dict(self._group.attrs)
        self._layout = Layout.from_json(attrs[LAYOUT_ATTR])
        self._n = int(attrs[COMMITTED_ATTR])
        self._skipped: list[dict[str, str]] = json.loads(attrs.get(SKIPPED_ATTR, "[]"))
        self._arrays = {name: self._group[name] for name in self._example_arrays()}
        for arr in self._arrays.values():
            if arr.shape[0] != self._n:
                arr.resize((self._n,) + arr.shape[1:])
        self._done = {str(v) for v in self._arrays["example"][: self._n]} if self._n else set()
        self._closed = False

    def _example_arrays(self) -> list[str]:
        return ["example", *self._layout.example_coords, *self._layout.variables]

    @property
    def layout(self) -> Layout:
        """The store's fixed layout (variables, coords, sizes, example coords)."""
        return self._layout

    @property
    def variables(self) -> dict[str, VariableSpec]:
        return dict(self._layout.variables)

    @property
    def n_examples(self) -> int:
        """Committed examples so far (appended ones still held in memory not included)."""
        return self._n

    def done_ids(self) -> set[str]:
        """Ids of the examples committed or appended (skip them when resuming)."""
        return self._done | self._pending_ids

    def append(self, example_ids: Sequence[str], example_coords: Mapping[str, Sequence], data: Mapping[str, Any]) -> None:
        """Write a batch: ``data[name]`` has shape (len(example_ids), *dims); smaller trailing dims are padded with fill."""
        if self._closed:
            raise StoreError(f"writer for {self.path} is closed")
        ids = [str(i) for i in example_ids]
        k = len(ids)
        if k == 0:
            return
        if len(set(ids)) != k:
            raise ValueError(f"append to {self.path}: example ids repeat within the batch")
        again = sorted(set(ids) & self.done_ids())
        if again:
            raise ValueError(f"append to {self.path}: examples already in the store: {again[:5]}")
        values = {"example": np.array(ids, dtype=np.dtypes.StringDType())}
        values.update(self._coord_values(example_coords, k))
        values.update(self._data_values(data, k))
        self._pending.append(values)
        self._pending_ids.update(ids)
        # a skip record is stale once its example is captured (it rides along with the next commit)
        self._skipped = [s for s in self._skipped if s["example"] not in self._pending_ids]
        epc = self._layout.examples_per_chunk
        total = self._n + len(self._pending_ids)
        if sum(v.nbytes for b in self._pending for v in b.values()) > self._max_buffer:
            self.flush()
        elif total // epc > self._n // epc:
            self.flush(upto=total // epc * epc)  # whole chunks now; the rest waits for the next block

    def flush(self, upto: int | None = None) -> None:
        """Write and commit pending examples (all, or those before example index ``upto``)."""
        if not self._pending:
            return
        merged = {name: np.concatenate([b[name] for b in self._pending]) for name in self._pending[0]}
        m = len(merged["example"]) if upto is None else upto - self._n
        n, new = self._n, self._n + m
        for name, arr in self._arrays.items():
            arr.resize((new,) + arr.shape[1:])
            arr[n:new] = merged[name][:m]
        self._commit(new)
        written = {str(i) for i in merged["example"][:m]}
        self._n = new
        self._done |= written
        self._pending_ids -= written
        self._pending = [{name: v[m:] for name, v in merged.items()}] if m < len(merged["example"]) else []

    def _coord_values(self, coords: Mapping[str, Sequence], k: int) -> dict[str, np.ndarray]:
        want = self._layout.example_coords
        _same_keys("example_coords", coords, want, self.path)
        out = {}
        for name, dt in want.items():
            vals = list(coords[name])
            if len(vals) != k:
                raise ValueError(f"append to {self.path}: example coord {name!r} has {len(vals)} values for {k} examples")
            if dt == "str":
                out[name] = np.array([str(v) for v in vals], dtype=np.dtypes.StringDType())
            else:
                out[name] = np.asarray(vals).astype(_EXAMPLE_COORD_NUMPY[dt], casting="same_kind")
        return out

    def _data_values(self, data: Mapping[str, Any], k: int) -> dict[str, np.ndarray]:
        _same_keys("data", data, self._layout.variables, self.path)
        return {name: _fit(name, data[name], spec, (k,) + self._layout.shape(name), self.path)
                for name, spec in self._layout.variables.items()}

    def record_skipped(self, example_id: str, reason: str) -> None:
        """Note an example left out and why (kept in the store attrs; recording the same id again replaces it)."""
        entry = {"example": str(example_id), "reason": str(reason)}
        self._skipped = [s for s in self._skipped if s["example"] != entry["example"]] + [entry]
        self._commit(self._n)

    def _commit(self, n: int) -> None:
        # One rewrite of the group's zarr.json (atomic rename): count and skipped list move together.
        self._group.attrs.update({COMMITTED_ATTR: n, SKIPPED_ATTR: json.dumps(self._skipped)})

    def close(self) -> TraceStore:
        """Write what is pending, finish, release the store's lock, and return the store opened for reading."""
        if not self._closed:
            try:
                self.flush()
            finally:
                self.abandon()
        return TraceStore.open(self.path)

    def abandon(self) -> None:
        """Stop without writing what is pending (after an error) and release the store's lock; committed examples stay."""
        self._closed = True
        if getattr(self, "_lock", None) is not None:
            _lock.release(self._lock)
            self._lock = None

    def __enter__(self) -> "TraceStoreWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def __repr__(self) -> str:
        return f"TraceStoreWriter({str(self.path)!r}, committed={self._n})"


def _example_coord_dtypes(example_coords: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(example_coords, Mapping):
        return {str(k): str(v) for k, v in example_coords.items()}
    return {str(k): ("bool" if k == "image_dependent" else "str") for k in example_coords}


def _json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(attrs)))
    except TypeError as err:
        raise ValueError(f"store attrs must be JSON-serialisable: {err}") from None


def _check_identity(path: Path, existing: dict[str, Any], attrs: dict[str, Any]) -> None:
    diff = first_difference(identity_attrs(existing), identity_attrs(attrs))
    if diff:
        raise StoreMismatchError(f"store {path} was written by another model or spec ({diff}); use another path")


def _same_keys(what: str, given: Mapping[str, Any], want: Mapping[str, Any], path: Path) -> None:
    missing, extra = sorted(set(want) - set(given)), sorted(set(given) - set(want))
    if missing or extra:
        raise ValueError(f"append to {path}: {what} missing {missing}, unexpected {extra}")


def _fit(name: str, value: Any, spec: VariableSpec, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Cast to the storage dtype and pad trailing dims up to ``shape`` with the fill value."""
    arr = np.asarray(value)
    target = spec.storage_dtype
    if hasattr(value, "detach"):  # a torch tensor slipped through
        raise TypeError(f"append to {path}: variable {name!r} is a torch tensor; pass numpy (.float().cpu().numpy())")
    if spec.dtype == "str" and arr.dtype.kind not in "UOT":
        raise TypeError(f"append to {path}: variable {name!r} is stored as strings but got {arr.dtype} data")
    if target.kind in "iub" and arr.dtype.kind not in "iub":
        raise TypeError(f"append to {path}: variable {name!r} is stored as {target} but got {arr.dtype} data")
    if target.kind in "iu" and arr.size and (arr.min() < np.iinfo(target).min or arr.max() > np.iinfo(target).max):
        raise ValueError(f"append to {path}: variable {name!r} has values outside {target}")
    if arr.ndim != len(shape) or arr.shape[0] != shape[0] or any(a > s for a, s in zip(arr.shape[1:], shape[1:])):
        raise ValueError(f"append to {path}: variable {name!r} has shape {arr.shape}, expected {shape} (dims {spec.dims})")
    arr = arr.astype(target)
    pad = [(0, s - a) for a, s in zip(arr.shape, shape)]
    if any(p for _, p in pad):
        arr = np.pad(arr, pad, constant_values=spec.fill_value)
    return arr


def _create(path: Path, layout: Layout, attrs: dict[str, Any]) -> "_lock.StoreLock | None":
    """Build an empty store in a hidden sibling folder, locked, and rename it to ``path``.

    Returns the lock, held (it survives the rename); None when another process put a store at
    ``path`` first (the caller then treats it as an existing store).
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise NotAStoreError(f"{path} exists and is not a TraceStore; refusing to write there")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.creating-*"):
        try:  # a folder another process is building right now is locked: leave it
            _lock.StoreLock(stale).acquire().release()
        except (_lock.StoreLockedError, OSError):
            continue
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
    tmp.mkdir()
    lock = _lock.StoreLock(tmp, "capture", shown_as=path).acquire()
    try:
        _build(tmp, layout, attrs)
        os.rename(tmp, path)  # atomic; replaces an empty directory at path
    except OSError:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if TraceStore.exists(path):
            return None
        raise
    except BaseException:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _lock.adopt(lock, path)
    return lock


def _build(tmp: Path, layout: Layout, attrs: dict[str, Any]) -> None:
    """The zarr arrays and group attributes of an empty store, in folder ``tmp``."""
    group_attrs = {**attrs, MARKER_ATTR: SCHEMA_VERSION, LAYOUT_ATTR: layout.to_json(), COMMITTED_ATTR: 0,
                   SKIPPED_ATTR: "[]"}
    epc = layout.examples_per_chunk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr flags variable-length strings as not yet in the v3 spec
        # mode "a": the fresh folder already holds our lock file, which mode "w" would delete
        group = zarr.open_group(LocalStore(tmp), mode="a", zarr_format=3, attributes=group_attrs)
        group.create_array("example", shape=(0,), chunks=(epc,), dtype=str, fill_value="",
                           dimension_names=["example"])
        for name, dt in layout.example_coords.items():
            group.create_array(name, shape=(0,), chunks=(epc,), dtype=str if dt == "str" else dt,
                               fill_value=_EXAMPLE_COORD_FILL[dt], dimension_names=["example"])
        for dim, values in layout.coords.items():
            is_str = bool(values) and isinstance(values[0], str)
            arr = group.create_array(dim, shape=(len(values),), chunks=(max(len(values), 1),),
                                     dtype=str if is_str else "int64", fill_value="" if is_str else 0,
                                     dimension_names=[dim])
            if values:
                arr[:] = np.array(values, dtype=np.dtypes.StringDType() if is_str else "int64")
        coordinates = " ".join(layout.example_coords)
        for name, spec in layout.variables.items():
            shape = (0,) + layout.shape(name)
            var_attrs = dict(spec.attrs)
            if coordinates:
                var_attrs["coordinates"] = coordinates
            if spec.dtype == "bfloat16":
                var_attrs["source_dtype"] = "bfloat16"
            group.create_array(
                name, shape=shape, dtype=str if spec.dtype == "str" else spec.storage_dtype, fill_value=spec.fill_value,
                chunks=chunk_shape((epc,) + shape[1:], spec.storage_dtype.itemsize, epc, layout.max_chunk_bytes),
                dimension_names=list(spec.dims), attributes=var_attrs,
            )
