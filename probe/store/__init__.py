"""TraceStore: a zarr v3 group holding one xarray Dataset, written crash-safely, read lazily (dask)."""

from probe.store.lock import StoreLockedError
from probe.store.reader import TraceStore, check_schema_version, open_store
from probe.store.schema import (
    SCHEMA_VERSION,
    IncomparableStoresError,
    NotAStoreError,
    StoreError,
    StoreMismatchError,
    VariableSpec,
)
from probe.store.writer import TraceStoreWriter

__all__ = [
    "SCHEMA_VERSION",
    "IncomparableStoresError",
    "NotAStoreError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "TraceStore",
    "TraceStoreWriter",
    "VariableSpec",
    "check_schema_version",
    "open_store",
]
