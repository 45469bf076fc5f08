"""TraceStore: a zarr v3 group holding one xarray Dataset, written crash-safely, read lazily (dask)."""

from probe.store.lock import StoreLockedError
from probe.store.reader import TraceStore, open_store
from probe.store.schema import (
    IncomparableStoresError,
    NotAStoreError,
    StoreError,
    StoreMismatchError,
    VariableSpec,
)
from probe.store.writer import TraceStoreWriter

__all__ = [
    "IncomparableStoresError",
    "NotAStoreError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "TraceStore",
    "TraceStoreWriter",
    "VariableSpec",
    "open_store",
]
