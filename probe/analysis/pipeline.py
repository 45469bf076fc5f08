"""Run every registered analysis a store (or a pair of stores) supports; the rest are skipped with a note.

A pair is first checked with `TraceStore.check_comparable`: incomparable stores are refused with its
one-line reason, unless the caller asks for the explicit intersection (`intersect=True`), which is
then described in `res["intersection"]` for the report to state at the top.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from probe.analysis._io import as_dataset
from probe.vocab import to_str
from probe.analysis.cka import CKAMemoryError
from probe.analysis.keyspace import KeyspaceConfig
from probe.analysis.probes import ProbeConfig
from probe.analysis import registry
from probe.analysis.registry import Inputs, skip_reason
from probe.analysis.stats import BootstrapConfig


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings shared by analyze() and compare_stores()."""

    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    keyspace: KeyspaceConfig = field(default_factory=KeyspaceConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    top_k_heads: int = 10

    def __post_init__(self) -> None:
        if self.top_k_heads < 1:
            raise ValueError(f"top_k_heads must be >= 1, got {self.top_k_heads}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (saved beside every result)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AnalysisConfig":
        """The config `to_dict` wrote (defaults for what it lacks)."""
        d = d or {}
        parts = {"bootstrap": BootstrapConfig, "keyspace": KeyspaceConfig, "probes": ProbeConfig}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in d.items()})


class Skipped(str):
    """A one-line note saying why a section was not computed."""


def _store(obj: Any) -> Any:
    """The TraceStore behind a path or TraceStore, or None for an in-memory Dataset / plain zarr."""
    from probe.store import NotAStoreError, TraceStore

    if isinstance(obj, TraceStore):
        return obj
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        try:
            return TraceStore.open(obj)
        except NotAStoreError:
            return None
    return None


def check_pair(before: Any, after: Any) -> None:
    """Raise IncomparableStoresError (one line) when two TraceStores cannot be compared as they are."""
    sb, sa = _store(before), _store(after)
    if sb is not None and sa is not None:
        sb.check_comparable(sa, examples=True)  # other example sets only with intersect, said at the top


def intersect(b: xr.Dataset, a: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset, list[str]]:
    """Both datasets restricted to what they share (variables, examples, labelled coordinates, captured layers).

    Returns the restricted pair and one note per restriction made, for the report's header.
    """
    notes = []
    only_b = sorted(set(b.data_vars) - set(a.data_vars))
    only_a = sorted(set(a.data_vars) - set(b.data_vars))
    if only_b or only_a:
        notes.append(f"variables in one store only left out: before {only_b or '-'}, after {only_a or '-'}")
    keep = sorted(set(b.data_vars) & set(a.data_vars))
    b, a = b[keep], a[keep]
    ib, ia = to_str(b["example"].values), to_str(a["example"].values)
    shared = [e for e in ib if e in set(ia)]
    if not shared:  # nothing to compare: say so before any analysis runs
        from probe.store import IncomparableStoresError

        raise IncomparableStoresError(f"the stores share no example id ({len(ib)} before, {len(ia)} after): "
                                      "capture both from the same manifest")
    if len(shared) < len(ib) or len(shared) < len(ia):
        notes.append(f"examples: {len(shared)} shared ({len(ib)} before, {len(ia)} after)")
        b, a = b.sel(example=shared), a.sel(example=shared)
    for dim in sorted(set(b.dims) & set(a.dims) - {"example"}):
        if dim not in b.coords or dim not in a.coords:
            continue
        vb, va = list(b[dim].values), list(a[dim].values)
        if vb == va:
            continue
        common = [v for v in vb if v in set(va)]
        notes.append(f"{dim}: {len(common)} shared ({len(vb)} before, {len(va)} after)")
        b, a = b.sel({dim: common}), a.sel({dim: common})
    if "attn_share" in b and "layer" in b["attn_share"].dims:
        # CaptureSpec(layers=...) stores unselected layers as all-NaN rows: they are not captured.
        rec = [b["attn_share"].notnull().any([d for d in b["attn_share"].dims if d != "layer"]).values,
               a["attn_share"].notnull().any([d for d in a["attn_share"].dims if d != "layer"]).values]
        both = np.asarray(rec[0]) & np.asarray(rec[1])
        if not both.all():
            layers = b["layer"].values[both]
            notes.append(f"attention layers recorded in both: {[int(x) for x in layers]} of {[int(x) for x in b['layer'].values]}")
            b, a = b.sel(layer=layers), a.sel(layer=layers)
    for dim in sorted(set(b.dims) ^ set(a.dims)):
        notes.append(f"dim {dim!r} in one store only")
    return b, a, notes


def _run(analysis: Any, fn: Any, inputs: Inputs, datasets: list[xr.Dataset], objects: list[Any]) -> Any:
    why = skip_reason(analysis, datasets, objects)
    if why:
        return Skipped(f"{analysis.heading}: skipped, {why}")
    try:
        return fn(inputs)
    except CKAMemoryError as err:
        return Skipped(f"{analysis.heading}: skipped, {err}")


def analyze(ds: Any, config: AnalysisConfig = AnalysisConfig(), baseline: Any = None, intersect_: bool = False) -> dict[str, Any]:
    """Every single-store analysis: name -> result, or a Skipped note.

    With a `baseline` store, the pair is first checked as in compare_stores (refused when
    incomparable unless `intersect_`), so a single-store report never mixes incomparable stores.
    """
    if baseline is not None and not intersect_:
        check_pair(baseline, ds)
    obj, data = ds, as_dataset(ds)
    inputs = Inputs(data, None, obj, None, config)
    return {a.name: _run(a, a.single, inputs, [data], [obj]) for a in registry.ANALYSES if a.single is not None}


def compare_stores(before: Any, after: Any, config: AnalysisConfig = AnalysisConfig(), intersect_: bool = False) -> dict[str, Any]:
    """Every before-vs-after analysis: name -> result, or a Skipped note.

    Incomparable TraceStores raise IncomparableStoresError with check_comparable's one-line reason;
    with `intersect_=True` they are compared on their explicit intersection instead, described in
    `res["intersection"]` (a list of notes, empty when nothing had to be left out).
    """
    notes: list[str] = []
    b, a = as_dataset(before), as_dataset(after)
    if intersect_:
        b, a, notes = intersect(b, a)
    else:
        check_pair(before, after)
    inputs = Inputs(b, a, before, after, config)
    out = {x.name: _run(x, x.pair, inputs, [b, a], [before, after]) for x in registry.ANALYSES if x.pair is not None}
    out["intersection"] = notes
    return out


def save_results(store: Any, results: dict[str, Any], config: AnalysisConfig, prefix: str = "analysis",
                 sources: dict[str, Any] | None = None, headline: list[str] | None = None) -> list[str]:
    """Write each result into the TraceStore `store` as group `{prefix}/<name>` with `config` saved beside it.

    xarray results are written as they are; dict results as one group per xarray member
    (`{name}-{key}`) plus their scalar members as JSON in the attrs of a `{name}` group. Skipped
    notes are not written as groups. Last, `{prefix}/index` lists what this save wrote with the
    fingerprints of `sources` ({"before": .., "after": ..}, default {"store": store}), so that
    `probe.analysis.saved.load_results` reads them back only for those stores, unchanged; `headline`
    (the verdict lines of a comparison) is kept in the index. Returns the group names written.
    """
    import json
    import uuid

    from probe.analysis.saved import SAVE_ID_ATTR, write_index
    from probe.store import TraceStore

    st = store if isinstance(store, TraceStore) else TraceStore.open(store)
    save_id = uuid.uuid4().hex
    written: list[str] = []
    entries: list[dict[str, Any]] = []

    def put(name: str, key: str | None, group: str, value: Any) -> None:
        kind = "dataset"
        if isinstance(value, xr.DataArray):
            kind, value = f"dataarray:{value.name or 'value'}", value.to_dataset(name=value.name or "value")
        elif not isinstance(value, xr.Dataset):
            kind, value = "json", xr.Dataset(attrs={"value": json.dumps(_plain(value))})
        st.write_group(f"{prefix}/{group}", value.assign_attrs({SAVE_ID_ATTR: save_id}), config)
        written.append(f"{prefix}/{group}")
        entries.append({"name": name, "key": key, "group": f"{prefix}/{group}", "kind": kind})

    for name, value in results.items():
        if isinstance(value, Skipped) or value is None or name == "intersection":
            continue
        if isinstance(value, dict):
            scalars = {}
            for key, member in value.items():
                if isinstance(member, (xr.Dataset, xr.DataArray)):
                    put(name, str(key), f"{name}-{key}", member)
                elif member is not None:
                    scalars[key] = member
            if scalars:
                put(name, "", name, scalars)
        else:
            put(name, None, name, value)
    skipped = {k: str(v) for k, v in results.items() if isinstance(v, Skipped)}
    written.append(write_index(st, prefix, entries, skipped, list(results.get("intersection", [])),
                               sources if sources is not None else {"store": st}, save_id, config, headline))
    return written


def _plain(obj: Any) -> Any:
    """Nested numpy/python values as JSON-able python (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in np.asarray(obj, dtype=object).ravel().tolist()] if isinstance(obj, np.ndarray) else [_plain(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
