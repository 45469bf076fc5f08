"""Store access for the views: lazy datasets, groups, example filters. No Streamlit here (views cache around it)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from probe.vocab import to_str
from probe.store import TraceStore

# example coordinates offered as filters (plus every label_* coordinate)
FILTER_COORDS = ("lang", "question_type", "condition")


def open_dataset(path: str | Path) -> xr.Dataset:
    """The store's lazy (dask-backed) dataset; per-example coords are in memory. Reopened when the store commits more."""
    return _open(str(path), (Path(path) / "zarr.json").stat().st_mtime_ns)


@lru_cache(maxsize=16)
def _open(path: str, committed_stamp: int) -> xr.Dataset:
    return TraceStore.open(path).dataset


def read_group(path: str | Path, name: str) -> xr.Dataset | None:
    """A named group of a store (`eval`, `analysis/<x>`, `runs/<x>`), lazily, or None when absent."""
    store = TraceStore.open(path)
    return store.read_group(name) if name in store.groups() else None


def pair_stamp(before: str | Path, after: str | Path) -> str | None:
    """Both stores' fingerprints and the time of the comparison saved in AFTER, as one string (a cache key that
    changes when either store or the saved comparison does), or None when a store cannot be fingerprinted (then it
    has no usable saved results)."""
    import json

    from probe.analysis.saved import COMPARE, INDEX, SavedResultsError, fingerprint
    from probe.store import StoreError

    index = Path(after) / COMPARE / INDEX / "zarr.json"
    try:
        saved = index.stat().st_mtime_ns if index.is_file() else None
        return json.dumps([fingerprint(before), fingerprint(after), saved], sort_keys=True, default=str)
    except (StoreError, SavedResultsError, OSError):
        return None


def store_groups(path: str | Path, prefix: str) -> list[str]:
    """Names of a store's groups under ``prefix`` (e.g. "runs/")."""
    return [g for g in TraceStore.open(path).groups() if g.startswith(prefix)]


def filter_options(ds: xr.Dataset) -> dict[str, list[str]]:
    """Filterable example coordinates and their values: lang, question_type, condition, label_*."""
    names = [c for c in FILTER_COORDS if c in ds.coords] + sorted(c for c in ds.coords if str(c).startswith("label_"))
    return {str(c): sorted(set(to_str(ds[c].values).tolist())) for c in names}


def example_mask(ds: xr.Dataset, filters: Mapping[str, tuple[str, ...]]) -> np.ndarray:
    """Boolean mask over examples: each filter keeps examples whose coordinate is one of its values (empty = all)."""
    keep = np.ones(ds.sizes["example"], dtype=bool)
    for coord, values in filters.items():
        if values and coord in ds.coords:
            keep &= np.isin(to_str(ds[coord].values), list(values))
    return keep


def filtered_ids(ds: xr.Dataset, filters: Mapping[str, tuple[str, ...]]) -> np.ndarray:
    """Example ids passing the filters, in store order."""
    return to_str(ds["example"].values)[example_mask(ds, filters)]


def filter_eval(ev: xr.Dataset, ids: np.ndarray) -> xr.Dataset:
    """The eval group's per-example rows restricted to ``ids`` (ids missing from the eval are ignored)."""
    have = to_str(ev["example"].values)
    ev = ev.isel(example=np.flatnonzero(np.isin(have, ids)))
    if "lang" in ev.dims and "example_lang" in ev.coords:  # aggregates per lang: keep the langs still present
        present = set(to_str(ev["example_lang"].values).tolist())
        ev = ev.sel(lang=[lg for lg in ev["lang"].values if str(lg) in present])
    return ev


def default_pair(root: str | Path, stores: list[str]) -> tuple[str | None, str | None]:
    """The (before, after) stores the dashboard opens on, as ROOT-relative paths (None: no default).

    Rule: a store holding a saved comparison (`probe compare --save`) whose before-store is under ROOT gives the
    pair (the most recent save when several do); else, with exactly two stores, the earlier-created one is before and
    the other after (the quickstart's base → ko_ft; creation = the `created` attr, else the last commit's time);
    else the first store alone.
    """
    from probe.analysis.saved import COMPARE, INDEX, SavedResultsError, saved_index
    from probe.store import StoreError

    root = Path(root)
    saved = []
    for after in stores:
        index = root / after / COMPARE / INDEX / "zarr.json"
        if not index.is_file():
            continue
        for before in stores:
            if before == after:
                continue
            try:
                saved_index(root / after, COMPARE, {"before": root / before, "after": root / after})
            except (SavedResultsError, StoreError, OSError, KeyError, ValueError):
                continue
            saved.append((index.stat().st_mtime_ns, before, after))
    if saved:
        _, before, after = max(saved)
        return before, after
    if len(stores) == 2:
        try:
            created = [(str(TraceStore.open(root / s).attrs.get("created", "")), (root / s / "zarr.json").stat().st_mtime_ns)
                       for s in stores]
        except (StoreError, OSError):
            return stores[0], None
        order = sorted(range(2), key=lambda i: (created[i], stores[i]))
        return stores[order[0]], stores[order[1]]
    return (stores[0] if stores else None), None
