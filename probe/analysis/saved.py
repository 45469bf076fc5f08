"""Results saved into a store (`probe analyze --save`, `probe compare --save`), read back only for the stores they came from.

One save writes its result groups `{prefix}/<name>` and, last, an index group `{prefix}/index` naming them, the
Skipped notes, and the fingerprint of every store the results were computed from. `load_results` refuses (one line)
when the index is absent, when a group is from another save, or when a store given differs from its fingerprint:
another store, or the same one since changed (recreated, appended to, re-evaluated).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import xarray as xr

INDEX = "index"
COMPARE = "compare"  # the prefix `probe compare --save` writes under, in the AFTER store
SAVE_ID_ATTR = "visblind_saved_id"


class SavedResultsError(ValueError):
    """No usable saved results for the stores asked about (one line saying why)."""


def _trace_store(obj: Any) -> Any:
    from probe.store import TraceStore

    if isinstance(obj, TraceStore):
        return obj
    if isinstance(obj, (str, Path)):
        return TraceStore.open(obj)
    raise SavedResultsError(f"saved results are kept for TraceStores on disk, not for a {type(obj).__name__}")


def _input_groups() -> list[str]:
    from probe.analysis import registry

    return sorted({g for a in registry.ANALYSES for g in a.groups})


def _group_stamp(folder: Path) -> str | None:
    """Digest of a group's files (relative path, size, mtime): every rewrite of a group makes new files."""
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        s = f.stat()
        h.update(f"{f.relative_to(folder).as_posix()}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def fingerprint(store: Any) -> dict[str, Any]:
    """What identifies a TraceStore's content: its identity attrs (weights, capture spec), creation time, committed
    examples, and a stamp of each group the analyses read (eval, vocab). A copy that keeps file times keeps it.

    A TraceStore object gives the committed count it was opened with (what a computation on it read). A store that
    another process is writing is refused (StoreLockedError, one line): results computed from it would describe a
    state it has already left, and a fingerprint taken now would pass them off as current."""
    from probe.store.lock import StoreLockedError, held_elsewhere
    from probe.store.schema import identity_attrs

    st = _trace_store(store)
    if held_elsewhere(st.path):
        raise StoreLockedError(f"store {st.path} is being written by another process: results computed from it are not "
                               "saved or read as current; rerun when the writer has finished")
    attrs = st.attrs
    return {"identity": identity_attrs(attrs), "created": attrs.get("created"), "examples": st.n_examples,
            "groups": {g: _group_stamp(st.path / g) for g in _input_groups()}}


def write_index(st: Any, prefix: str, entries: list[dict[str, Any]], skipped: dict[str, str], intersection: list[str],
                sources: dict[str, Any], save_id: str, config: Any, headline: list[str] | None = None) -> str:
    """Write `{prefix}/index` (last, after the result groups it lists); returns its group name.

    `headline`: the verdict lines drawn from these results, kept beside them so a reader need not redo their bootstraps.
    """
    attrs = {SAVE_ID_ATTR: save_id, "entries": json.dumps(entries), "skipped": json.dumps(skipped),
             "intersection": json.dumps(intersection),
             "sources": json.dumps({role: fingerprint(s) for role, s in sources.items()}, sort_keys=True, default=str)}
    if headline is not None:
        attrs["verdict"] = json.dumps(headline, ensure_ascii=False)
    from probe.results import ANALYSIS, stamp

    st.write_group(f"{prefix}/{INDEX}", stamp(xr.Dataset(attrs=attrs), ANALYSIS), config)  # a typed, versioned result
    return f"{prefix}/{INDEX}"


def saved_index(path: Any, prefix: str, sources: dict[str, Any]) -> xr.Dataset:
    """The index group of the results saved in store `path` under `prefix`, if they were computed from `sources`
    ({"before": store, "after": store} or {"store": store}) as they are now; SavedResultsError (one line) if not."""
    from probe.store.lock import StoreLockedError
    from probe.store.schema import first_difference

    st = _trace_store(path)
    where = f"{st.path}/{prefix}"
    if f"{prefix}/{INDEX}" not in st.groups():
        raise SavedResultsError(f"no saved results in {where}")
    from probe.results import ANALYSIS, ResultError, check

    try:
        index = check(st.read_group(f"{prefix}/{INDEX}"), ANALYSIS, where)
    except ResultError as err:
        raise SavedResultsError(str(err)) from None
    saved = json.loads(index.attrs["sources"])
    if set(saved) != set(sources):
        raise SavedResultsError(f"the results saved in {where} are of stores {sorted(saved)}, not {sorted(sources)}")
    for role, store in sources.items():
        try:
            now = json.loads(json.dumps(fingerprint(store), sort_keys=True, default=str))
        except StoreLockedError as err:
            raise SavedResultsError(str(err)) from None
        diff = first_difference(saved[role], now)
        if diff is not None:
            raise SavedResultsError(f"the results saved in {where} were computed from another {role} store, or from "
                                    f"{_trace_store(store).path} before it changed ({diff})")
    return index


def load_results(path: Any, prefix: str, sources: dict[str, Any], names: set[str] | None = None) -> tuple[dict[str, Any], Any]:
    """The results saved in store `path` under `prefix` and their AnalysisConfig, if they were computed from `sources`
    as they are now (see saved_index); SavedResultsError (one line) if not.

    `names`: load only these analyses. Results come back as `compare_stores`/`analyze` returned them, read lazily.
    """
    from probe.analysis.pipeline import AnalysisConfig, Skipped
    from probe.store.groups import group_config

    st = _trace_store(path)
    index = saved_index(st, prefix, sources)
    save_id = index.attrs[SAVE_ID_ATTR]
    res: dict[str, Any] = {"intersection": json.loads(index.attrs["intersection"])}
    for name, note in json.loads(index.attrs["skipped"]).items():
        if names is None or name in names:
            res[name] = Skipped(note)
    for e in json.loads(index.attrs["entries"]):
        if names is not None and e["name"] not in names:
            continue
        ds = st.read_group(e["group"])
        if ds.attrs.get(SAVE_ID_ATTR) != save_id:
            raise SavedResultsError(f"group {e['group']} of {st.path} is not from the save its index describes (rerun the save)")
        value: Any = (json.loads(ds.attrs["value"]) if e["kind"] == "json"
                      else ds[e["kind"].split(":", 1)[1]] if e["kind"].startswith("dataarray:") else ds)
        if isinstance(value, xr.Dataset):
            value.attrs = {k: v for k, v in value.attrs.items() if k not in (SAVE_ID_ATTR, "visblind_group", "config", "config_type")}
        if e["key"] is None:
            res[e["name"]] = value
        elif e["key"] == "":  # the scalar members of a dict result
            res.setdefault(e["name"], {}).update(value)
        else:
            res.setdefault(e["name"], {})[e["key"]] = value
    return res, AnalysisConfig.from_dict(group_config(index))
