"""Store schema pieces shared by writer and reader: variable specs, errors, layout identity, chunking."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = "2"  # 2: input_ids/token, group coord, one layer selection, groups, writer lock
READABLE_SCHEMA_VERSIONS = ("1", "2")  # what this reader understands; a newer store is refused, not misread
STORE_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool", "str")
EXAMPLE_COORD_DTYPES = ("str", "bool", "int64", "float64")
# Group attributes owned by the store itself (not provenance).
MARKER_ATTR = "visblind_store"
LAYOUT_ATTR = "_visblind_layout"
COMMITTED_ATTR = "_visblind_committed"
SKIPPED_ATTR = "skipped"
# Provenance attrs that may differ between an interrupted run and its resumption: times, versions, and the
# names a model, LoRA adapter or manifest were given by (the weights hash identifies the weights).
VOLATILE_ATTRS = frozenset({"created", "versions", "model_id", "lora_adapter", "manifest", SKIPPED_ATTR,
                            LAYOUT_ATTR, COMMITTED_ATTR, MARKER_ATTR})
DEFAULT_MAX_CHUNK_BYTES = 64 * 2**20


class StoreError(ValueError):
    """A store path or a store's content is not what the caller expects."""


class NotAStoreError(StoreError):
    """The path holds no TraceStore."""


class StoreMismatchError(StoreError):
    """An existing store was created with a different layout, model or capture spec."""


class IncomparableStoresError(StoreError):
    """Two stores whose dims, coords or capture specs do not line up."""


class InvalidStoreError(StoreError):
    """A store whose attributes or array metadata are inconsistent (hand-edited, damaged, or from a newer schema)."""


@dataclass(frozen=True)
class VariableSpec:
    """One stored variable: dims (``example`` first), storage dtype, fill value, attrs (e.g. ``tl_site``).

    ``bfloat16`` is stored as float32 (zarr has no bfloat16; every bf16 value is exact in float32)
    with the attr ``source_dtype = "bfloat16"``.
    """

    dims: tuple[str, ...]
    dtype: str
    fill: float | int | bool = np.nan
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if not self.dims or self.dims[0] != "example":
            raise ValueError(f"VariableSpec dims must start with 'example', got {self.dims}")
        if len(set(self.dims)) != len(self.dims):
            raise ValueError(f"VariableSpec dims repeat a name: {self.dims}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"VariableSpec dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        kind = np.dtype(self.storage_dtype).kind
        if self.dtype == "str" and not isinstance(self.fill, str):
            raise ValueError(f"str VariableSpec needs a str fill, got {self.fill!r}")
        if kind in "iu" and (isinstance(self.fill, float) and not float(self.fill).is_integer()):
            raise ValueError(f"integer VariableSpec ({self.dtype}) needs an integer fill, got {self.fill!r}")
        if kind == "b" and not isinstance(self.fill, (bool, np.bool_)):
            raise ValueError(f"bool VariableSpec needs a bool fill, got {self.fill!r}")
        try:
            json.dumps(self.attrs)
        except TypeError as err:
            raise ValueError(f"VariableSpec attrs must be JSON-serialisable: {err}") from None

    @property
    def storage_dtype(self) -> np.dtype:
        """The numpy dtype written to zarr (variable-length strings for ``str``)."""
        if self.dtype == "str":
            return np.dtypes.StringDType()
        return np.dtype("float32" if self.dtype == "bfloat16" else self.dtype)

    @property
    def fill_value(self) -> Any:
        """The fill cast to the storage dtype (as a Python scalar)."""
        if self.dtype == "str":
            return str(self.fill)
        return self.storage_dtype.type(self.fill).item()

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dims"] = list(self.dims)
        d["fill"] = _json_scalar(self.fill_value)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> "VariableSpec":
        fill = d["fill"]
        fill = float("nan") if fill == "NaN" else fill
        return cls(tuple(d["dims"]), d["dtype"], fill, dict(d.get("attrs", {})))


def _json_scalar(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v


def normalise_coord_values(dim: str, values: Any) -> list:
    """Coordinate values as a JSON-able list of ints or strs (one type per dim)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"coordinate {dim!r} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return [int(v) for v in arr]
    if arr.dtype.kind in "UO":
        return [str(v) for v in arr]
    raise ValueError(f"coordinate {dim!r} must hold ints or strings, got dtype {arr.dtype}")


def chunk_shape(shape: tuple[int, ...], itemsize: int, examples_per_chunk: int, max_bytes: int) -> tuple[int, ...]:
    """Chunks of ``examples_per_chunk`` examples (fewer, then split along later dims, when over ``max_bytes``).

    A smaller example chunk is always a divisor of ``examples_per_chunk``, so flushing whole blocks of
    ``examples_per_chunk`` examples writes whole chunks of every variable.
    """
    per_example = itemsize * math.prod(shape[1:])
    fits = [d for d in range(1, examples_per_chunk + 1) if examples_per_chunk % d == 0 and d * per_example <= max_bytes]
    chunks = [max(fits, default=1)] + list(shape[1:])
    for i in range(1, len(chunks)):
        size = itemsize * math.prod(chunks)
        if size <= max_bytes:
            break
        chunks[i] = max(1, chunks[i] // math.ceil(size / max_bytes))
    return tuple(max(c, 1) for c in chunks)


@dataclass(frozen=True)
class Layout:
    """What fixes a store's shape: variables, non-example coords and sizes, example coords, chunking."""

    variables: dict[str, VariableSpec]
    coords: dict[str, list]
    sizes: dict[str, int]
    example_coords: dict[str, str]
    examples_per_chunk: int
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.examples_per_chunk < 1 or self.max_chunk_bytes < 1:
            raise ValueError("examples_per_chunk and max_chunk_bytes must be positive")
        if not self.variables:
            raise ValueError("a store needs at least one variable")
        both = set(self.coords) & set(self.sizes)
        if both:
            raise ValueError(f"dims {sorted(both)} are given both coords and sizes; give one")
        if "example" in self.coords or "example" in self.sizes:
            raise ValueError("'example' grows with appends: do not give it coords or a size")
        for dim, n in self.sizes.items():
            if int(n) < 0:
                raise ValueError(f"size of dim {dim!r} must be >= 0, got {n}")
        for name, var in self.variables.items():
            missing = [d for d in var.dims[1:] if d not in self.coords and d not in self.sizes]
            if missing:
                raise ValueError(f"variable {name!r}: dims {missing} have neither coords nor sizes")
        clash = set(self.variables) & (set(self.coords) | set(self.example_coords) | {"example"})
        if clash:
            raise ValueError(f"names {sorted(clash)} are used both as variable and coordinate")
        for name, dt in self.example_coords.items():
            if dt not in EXAMPLE_COORD_DTYPES:
                raise ValueError(f"example coord {name!r}: dtype must be one of {EXAMPLE_COORD_DTYPES}, got {dt!r}")
            if name in self.coords or name in self.sizes or name == "example":
                raise ValueError(f"example coord {name!r} clashes with a dimension name")

    def dim_size(self, dim: str) -> int:
        return len(self.coords[dim]) if dim in self.coords else int(self.sizes[dim])

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one example of variable ``name`` (without the example dim)."""
        return tuple(self.dim_size(d) for d in self.variables[name].dims[1:])

    def to_json(self) -> str:
        return json.dumps(
            {
                "variables": {k: v.to_json_dict() for k, v in sorted(self.variables.items())},
                "coords": self.coords,
                "sizes": {k: int(v) for k, v in self.sizes.items()},
                "example_coords": self.example_coords,
                "examples_per_chunk": self.examples_per_chunk,
                "max_chunk_bytes": self.max_chunk_bytes,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        d = json.loads(text)
        return cls(
            {k: VariableSpec.from_json_dict(v) for k, v in d["variables"].items()},
            d["coords"],
            d["sizes"],
            d["example_coords"],
            d["examples_per_chunk"],
            d.get("max_chunk_bytes", DEFAULT_MAX_CHUNK_BYTES),
        )


def identity_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attrs that must match for a store to be resumed (model, weights, spec ...; not time or versions)."""
    return {k: v for k, v in attrs.items() if k not in VOLATILE_ATTRS}


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Name and values of the first key on which two dicts differ, or None."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return f"{key}.{first_difference(va, vb)}"
            return f"{key}: {_short(va)} != {_short(vb)}"
    return None


def _short(v: Any, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."
