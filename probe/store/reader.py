"""TraceStore: a committed, lazily opened (dask) view of a store on disk."""

from __future__ import annotations

import json
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore


from probe.store.groups import check_group_name, list_groups, read_group, write_group
from probe.store.lock import store_lock
from probe.store.schema import (
    COMMITTED_ATTR,
    LAYOUT_ATTR,
    MARKER_ATTR,
    SKIPPED_ATTR,
    SCHEMA_VERSION,
    READABLE_SCHEMA_VERSIONS,
    IncomparableStoresError,
    InvalidStoreError,
    Layout,
    StoreMismatchError,
    NotAStoreError,
    first_difference,
)


class _CommittedView(WrapperStore[LocalStore]):
    """Read-only view that shows every `example`-first array cut to the committed example count.

    A writer killed mid-append leaves arrays longer than the commit record (and of unequal
    lengths); readers must see exactly the committed examples, so array metadata is patched.
    """

    def __init__(self, store: LocalStore, n_committed: int) -> None:
        super().__init__(store)
        self._n = n_committed

    def _with_store(self, store: LocalStore) -> "_CommittedView":
        return type(self)(store, self._n)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        if buf is None or byte_range is not None or not key.endswith("zarr.json") or key == "zarr.json":
            return buf
        meta = json.loads(buf.to_bytes())
        dims = meta.get("dimension_names") or ()
        if meta.get("node_type") == "array" and dims and dims[0] == "example" and meta["shape"][0] != self._n:
            meta["shape"][0] = min(meta["shape"][0], self._n)
            return prototype.buffer.from_bytes(json.dumps(meta).encode())
        return buf


def read_group_attrs(path: Path, validate: bool = True) -> dict[str, Any]:
    """The group attributes of the store at ``path``; NotAStoreError if it is not a TraceStore.

    With ``validate`` (the default), InvalidStoreError (one line naming the attribute or array) unless the store's own
    attributes are consistent with its arrays (see `validate_attrs`); nothing is modified either way.
    """
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        why = "does not exist" if not path.exists() else "is not a zarr v3 group (no zarr.json)"
        raise NotAStoreError(f"not a TraceStore: {path} {why}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise NotAStoreError(f"not a TraceStore: {path}/zarr.json is unreadable ({err})") from None
    attrs = (meta.get("attributes") or {}) if isinstance(meta, dict) else {}
    if not isinstance(attrs, dict) or meta.get("node_type") != "group" or MARKER_ATTR not in attrs or LAYOUT_ATTR not in attrs:
        raise NotAStoreError(f"not a TraceStore: {path} is a zarr node without the {MARKER_ATTR!r} marker")
    if validate:
        validate_attrs(path, attrs)
    return attrs


def validate_attrs(path: Path, attrs: dict[str, Any]) -> None:
    """InvalidStoreError (one line) unless a store's attributes can be trusted: a schema version this reader knows, a
    layout that parses, a committed count that is an integer within every example array's rows, a JSON skipped list."""
    where = f"store {path}"
    version = str(attrs[MARKER_ATTR])
    if version not in READABLE_SCHEMA_VERSIONS:
        newer = version.isdigit() and int(version) > int(READABLE_SCHEMA_VERSIONS[-1])
        raise InvalidStoreError(
            f"{where}: attribute {MARKER_ATTR!r} is store schema version {version!r}, "
            + (f"newer than this visblind reads ({', '.join(READABLE_SCHEMA_VERSIONS)}): upgrade visblind to open it"
               if newer else f"not one this visblind knows ({', '.join(READABLE_SCHEMA_VERSIONS)})"))
    try:
        layout = Layout.from_json(attrs[LAYOUT_ATTR])
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise InvalidStoreError(f"{where}: attribute {LAYOUT_ATTR!r} is not a valid layout ({_first_line(err)})") from None
    n = attrs.get(COMMITTED_ATTR)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidStoreError(f"{where}: attribute {COMMITTED_ATTR!r} (the committed example count) is {n!r}, "
                                "not a count >= 0; the store was edited or damaged and is not opened")
    for name in ["example", *layout.example_coords, *layout.variables]:
        meta_file = path / name / "zarr.json"
        try:
            shape = json.loads(meta_file.read_text())["shape"]
            rows = int(shape[0])
        except FileNotFoundError:
            raise InvalidStoreError(f"{where}: array {name!r} of its layout is missing ({meta_file} not found)") from None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise InvalidStoreError(f"{where}: {meta_file} is unreadable ({_first_line(err)})") from None
        if rows < n:
            raise InvalidStoreError(
                f"{where}: attribute {COMMITTED_ATTR!r} says {n} examples are committed but array {name!r} holds {rows} "
                "rows; the store was edited or damaged and is not opened (nothing was changed)")
    try:
        skipped = json.loads(attrs.get(SKIPPED_ATTR, "[]"))
        if not isinstance(skipped, list) or not all(isinstance(s, dict) and {"example", "reason"} <= set(s) for s in skipped):
            raise ValueError("not a list of {example, reason}")
    except (TypeError, ValueError) as err:
        raise InvalidStoreError(f"{where}: attribute {SKIPPED_ATTR!r} is not a JSON list of skipped examples "
                                f"({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_schema_version(path: str | os.PathLike) -> None:
    """StoreError (one line) unless the store at ``path`` was written with this schema version (needed to write it)."""
    found = str(read_group_attrs(Path(path))[MARKER_ATTR])
    if found != SCHEMA_VERSION:
        raise StoreMismatchError(
            f"store {path} has store schema version {found}; this visblind writes schema {SCHEMA_VERSION} and cannot "
            "add to it: capture into a new path (the old store stays readable)")


class TraceStore:
    """A TraceStore on disk: committed examples only, opened lazily with dask, chunked along `example`."""

    def __init__(self, path: Path, attrs: dict[str, Any]) -> None:
        self.path = path
        self._attrs = attrs

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a TraceStore (possibly interrupted, still resumable)."""
        try:
            read_group_attrs(Path(path), validate=False)  # a damaged store is still one: opening it says what is wrong
        except NotAStoreError:
            return False
        return True

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TraceStore":
        """Open lazily; NotAStoreError (one line) if ``path`` is not a TraceStore."""
        path = Path(path)
        return cls(path, read_group_attrs(path))

    @property
    def schema_version(self) -> str:
        """The store schema version it was written with ("1" for stores before input tokens and groups)."""
        return str(self._attrs[MARKER_ATTR])

    @property
    def n_examples(self) -> int:
        """Number of committed examples."""
        return int(self._attrs[COMMITTED_ATTR])

    @cached_property
    def layout(self) -> Layout:
        return Layout.from_json(self._attrs[LAYOUT_ATTR])

    @cached_property
    def dataset(self) -> xr.Dataset:
        """The committed examples as a lazy, dask-backed Dataset (dask chunks = zarr chunks)."""
        view = _CommittedView(LocalStore(self.path, read_only=True), self.n_examples)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            ds = xr.open_zarr(view, consolidated=False, chunks={}, zarr_format=3)
        # Per-example labels are small and used for grouping/selection: hold them in memory.
        labels = [c for c in ds.coords if c not in ds.dims and ds[c].dims == ("example",)]
        loaded = ds.reset_coords(labels)[labels].compute()  # one dask pass for all of them
        return ds.assign_coords({c: loaded[c] for c in labels})

    @property
    def attrs(self) -> dict[str, Any]:
        """Provenance attrs: model_id, weights_hash, adapter, capture_spec (JSON), versions, created, skipped ..."""
        return {k: v for k, v in self._attrs.items() if k not in (LAYOUT_ATTR, COMMITTED_ATTR)}

    @property
    def example_ids(self) -> list[str]:
        return [str(v) for v in self.dataset["example"].values]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Examples left out, as ``{"example": id, "reason": ...}``."""
        return json.loads(self._attrs.get(SKIPPED_ATTR, "[]"))

    @property
    def capture_spec(self) -> dict[str, Any]:
        """The capture spec the store was written with, as a dict (`CaptureSpec(**...)` in probe.capture)."""
        if "capture_spec" not in self._attrs:
            raise KeyError(f"store {self.path} has no capture_spec attr")
        return json.loads(self._attrs["capture_spec"])

    def check_comparable(self, other: "TraceStore", examples: bool = False) -> None:
        """Raise IncomparableStoresError (one line) unless the two stores' dims, coords and capture specs line up and
        (with ``examples``) they hold the same example ids; stores sharing no example id are refused either way."""
        a, b = self.layout, other.layout
        where = f"stores {self.path} and {other.path}"
        va, vb = str(self._attrs.get(MARKER_ATTR)), str(other._attrs.get(MARKER_ATTR))
        if va != vb:
            raise IncomparableStoresError(f"{where} have store schema versions {va} and {vb}; capture both with one version")
        if "capture_spec" in self._attrs or "capture_spec" in other._attrs:
            sa = json.loads(self._attrs.get("capture_spec", "{}"))
            sb = json.loads(other._attrs.get("capture_spec", "{}"))
            diff = first_difference(_comparable_spec(sa), _comparable_spec(sb))
            if diff:
                raise IncomparableStoresError(f"{where} differ in capture spec {diff}")
        only = sorted(set(a.variables) ^ set(b.variables))
        if only:
            raise IncomparableStoresError(f"{where} hold different variables: {only} in one only")
        for name in sorted(a.variables):
            va, vb = a.variables[name], b.variables[name]
            if va.dims != vb.dims:
                raise IncomparableStoresError(f"{where}: variable {name!r} has dims {va.dims} vs {vb.dims}")
        for dim in sorted({d for v in a.variables.values() for d in v.dims[1:]}):
            diff = _dim_difference(dim, a, b)
            if diff:
                raise IncomparableStoresError(f"{where}: dim {dim!r} {diff}")
        self._check_same_tokens(other, where)
        self.check_examples(other, same=examples)

    def check_examples(self, other: "TraceStore", same: bool = True) -> None:
        """IncomparableStoresError (one line, with the counts) when the stores share no example id, or (``same``) when
        their example sets differ at all. Reads only the example ids."""
        ids_a, ids_b = set(self.example_ids), set(other.example_ids)
        if not ids_a and not ids_b:
            return  # two empty stores: only their layouts can be compared
        shared = len(ids_a & ids_b)
        where = f"stores {self.path} ({len(ids_a)} examples) and {other.path} ({len(ids_b)} examples)"
        if not shared:
            raise IncomparableStoresError(f"{where} share no example id: capture both from the same manifest")
        if same and ids_a != ids_b:
            raise IncomparableStoresError(
                f"{where} hold different examples ({shared} shared, {len(ids_a) - shared} only in the first, "
                f"{len(ids_b) - shared} only in the second): compare the {shared} shared with --intersect")

    def _check_same_tokens(self, other: "TraceStore", where: str, block: int = 512) -> None:
        """Shared examples must have the same token ids at their text positions (every non-visual, non-pad one)."""
        need = ("input_ids", "segment_ids")
        if not all(n in self.layout.variables and n in other.layout.variables for n in need):
            return
        ids_a, ids_b = self.example_ids, other.example_ids
        where_b = {e: i for i, e in enumerate(ids_b)}
        shared = [(i, where_b[e]) for i, e in enumerate(ids_a) if e in where_b]
        skip_a, skip_b = _non_text_codes(self.layout), _non_text_codes(other.layout)
        for start in range(0, len(shared), block):
            part = shared[start : start + block]
            ta = self._text_tokens([i for i, _ in part], skip_a)
            tb = other._text_tokens([j for _, j in part], skip_b)
            for (i, _), x, y in zip(part, ta, tb):
                if not np.array_equal(x, y):
                    raise IncomparableStoresError(
                        f"{where}: example {ids_a[i]!r} was tokenised differently ({len(x)} vs {len(y)} text tokens"
                        f"{_first_token_difference(x, y)}); capture both with the same processor and prompt format")

    def _text_tokens(self, rows: list[int], skip: list[int]) -> list[np.ndarray]:
        ds = self.dataset[["input_ids", "segment_ids"]].isel(example=rows).compute()
        ids, seg = ds["input_ids"].values, ds["segment_ids"].values
        return [ids[k][~np.isin(seg[k], skip)] for k in range(len(rows))]

    # --- groups -----------------------------------------------------------------------------------------
    def write_group(self, name: str, dataset: xr.Dataset, config: Any = None) -> None:
        """Write `dataset` as sub-group `name` (`eval`, `vocab`, `analysis/<name>`, `runs/<name>` ...), whole or not at
        all, replacing one of that name; `config` (a frozen dataclass or dict) is saved as JSON in its attrs."""
        taken = set(self.layout.variables) | set(self.layout.coords) | set(self.layout.example_coords) | {"example"}
        check_group_name(name, taken)
        with store_lock(self.path, "write group " + repr(name)):
            write_group(self.path, name, dataset, config)

    def read_group(self, name: str) -> xr.Dataset:
        """Sub-group `name` as a lazy Dataset (its config: `json.loads(ds.attrs["config"])`)."""
        return read_group(self.path, name)

    def groups(self) -> list[str]:
        """Names of the sub-groups, sorted (e.g. ['analysis/attention', 'eval', 'vocab'])."""
        return list_groups(self.path)

    def tree(self) -> xr.DataTree:
        """The captured examples at `capture` and every group at its path, as one lazy xarray DataTree.

        The capture is a sibling of the groups, not their parent: a DataTree aligns children with their
        parent, and groups have their own `example` (an eval runs over the whole manifest) and `layer` dims.
        """
        return xr.DataTree.from_dict({"capture": self.dataset, **{g: self.read_group(g) for g in self.groups()}})

    def summary(self) -> str:
        """Human-readable schema, per-variable size on disk and provenance (for `probe info`)."""
        lay = self.layout
        lines = [f"TraceStore {self.path}", f"  examples: {self.n_examples} committed, {len(self.skipped)} skipped"]
        dims = {d: lay.dim_size(d) for v in lay.variables.values() for d in v.dims[1:]}
        lines.append("  dims: " + ", ".join([f"example={self.n_examples}"] + [f"{d}={n}" for d, n in dims.items()]))
        lines.append("  variables:")
        total = 0
        for name, var in sorted(lay.variables.items()):
            size = _disk_bytes(self.path / name)
            total += size
            site = f"  [{var.attrs['tl_site']}]" if "tl_site" in var.attrs else ""
            lines.append(f"    {name:<26} {var.dtype:<8} ({', '.join(var.dims)})  {_human(size)}{site}")
        lines.append(f"  on disk: {_human(_disk_bytes(self.path))} (variables {_human(total)})")
        lines.append("  example coords: " + (", ".join(lay.example_coords) or "-"))
        # groups written beside the capture: `probe eval` results, the decoder vocabulary
        groups = self.groups()
        if groups:
            lines.append("  groups: " + ", ".join(f"{g} ({_human(_disk_bytes(self.path / g))})" for g in groups))
        lines.append("  provenance:")
        for key, value in sorted(self.attrs.items()):
            if key in (SKIPPED_ATTR, MARKER_ATTR):
                continue
            text = str(value)
            lines.append(f"    {key}: {text if len(text) <= 200 else text[:197] + '...'}")
        for item in self.skipped[:10]:
            lines.append(f"    skipped {item['example']}: {item['reason']}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r}, examples={self.n_examples})"


def open_store(path: str | os.PathLike) -> TraceStore:
    """Open the TraceStore at ``path`` lazily."""
    return TraceStore.open(path)


# Capture-spec fields that change how a pass runs (or what is stored once per store) but not per-example variables.
_RUNTIME_SPEC_FIELDS = ("batch_size", "padding_side", "blockwise_above", "block_size", "vocab")


def _non_text_codes(layout: Layout) -> list[int]:
    """Segment codes that are not text (visual rows, padding, past the end): their ids are not compared."""
    names = layout.coords.get("segment", [])
    return [-1] + [k for k, n in enumerate(names) if n in ("pad", "visual")]


def _first_token_difference(x: np.ndarray, y: np.ndarray) -> str:
    n = min(len(x), len(y))
    diff = np.nonzero(x[:n] != y[:n])[0]
    k = int(diff[0]) if diff.size else n
    return f", first at text token {k}"


def _comparable_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _RUNTIME_SPEC_FIELDS}


def _dim_difference(dim: str, a: Layout, b: Layout) -> str | None:
    if dim == "position" or dim.startswith(("vtoken", "vpatch")):
        return None  # sequence lengths follow the data, not the model: compared by position, not size
    if dim in a.coords or dim in b.coords:
        ca, cb = a.coords.get(dim), b.coords.get(dim)
        return None if ca == cb else f"coords differ: {_brief(ca)} vs {_brief(cb)}"
    na, nb = a.sizes.get(dim), b.sizes.get(dim)
    return None if na == nb else f"sizes differ: {na} vs {nb}"


def _brief(values: list | None) -> str:
    if values is None:
        return "none"
    return str(values) if len(values) <= 8 else f"[{values[0]} ... {values[-1]}] ({len(values)})"


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

