"""Sub-groups of a store (eval, vocab, analysis/<name>, runs/<name>): written whole or not at all, read by name.

A group is written as a stand-alone zarr group in a hidden sibling folder of the store and renamed
into place, so a reader sees the old group, the new one, or (only if a crash lands between the two
renames of a replacement) none — never a half-written one. Its config rides in its attrs as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import xarray as xr

from probe.store.schema import StoreError

GROUP_MARKER_ATTR = "visblind_group"
CONFIG_ATTR = "config"
CONFIG_TYPE_ATTR = "config_type"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# groups that stores written before schema 2 may hold without the marker
_LEGACY = ("eval", "vocab")


def check_group_name(name: str, taken: set[str] = frozenset()) -> str:
    """A valid group name (one or two `/`-separated parts of letters, digits, `_.-`), not a root array name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(f"group name {name!r} must be one or two '/'-separated parts of letters, digits, '_', '.', '-'")
    if name.split("/")[0] in taken:
        raise StoreError(f"group name {name!r} clashes with a store variable or coordinate")
    return name


def config_json(config: Any) -> tuple[str, str]:
    """(JSON text, type name) of a frozen dataclass or a dict."""
    if config is None:
        return "null", ""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        raw, kind = dataclasses.asdict(config), f"{type(config).__module__}.{type(config).__qualname__}"
    elif isinstance(config, dict):
        raw, kind = config, "dict"
    else:
        raise TypeError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")
    try:
        return json.dumps(raw, sort_keys=True, default=_jsonable), kind
    except TypeError as err:
        raise TypeError(f"config is not JSON-serialisable: {err}") from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def write_dataset(target: Path, dataset: xr.Dataset, attrs: dict[str, Any], scratch: Path | None = None) -> Path:
    """Write `dataset` (plus `attrs`) as a zarr group at `target`, crash-safely, replacing one already there.

    Temporary folders are named `<scratch>.writing-*` / `<scratch>.old-*` (default: `.<target name>` beside it);
    keep them outside any zarr hierarchy.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    home = scratch or target.parent / f".{target.name}"
    _recover(target, home)
    for stale in [*home.parent.glob(f"{home.name}.writing-*"), *home.parent.glob(f"{home.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = home.parent / f"{home.name}.writing-{uuid.uuid4().hex}"
    ds = dataset.copy()
    ds.attrs = {**dataset.attrs, **attrs}
    try:
        with warnings.catch_warnings():  # fixed-width strings have no zarr v3 spec yet; xarray reads them back fine
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            ds.to_zarr(tmp, mode="w-", consolidated=False, zarr_format=3)
        if target.exists():
            old = home.parent / f"{home.name}.old-{uuid.uuid4().hex}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _recover(target: Path, home: Path) -> None:
    """Put back the old copy a crash left aside between the two renames of a replacement (writers only)."""
    if not target.exists():
        old = sorted(home.parent.glob(f"{home.name}.old-*"))
        if old:
            os.rename(old[0], target)


def _scratch(store: Path, name: str) -> Path:
    return store.parent / f".{store.name}.{'.'.join(name.split('/'))}"


def write_group(store: Path, name: str, dataset: xr.Dataset, config: Any = None) -> None:
    """Write `dataset` as sub-group `name` of the store at `store` (parents created as plain zarr groups)."""
    text, kind = config_json(config)
    parts = name.split("/")
    for depth in range(1, len(parts)):
        ensure_plain_group(store.joinpath(*parts[:depth]))
    write_dataset(store.joinpath(*parts), dataset, {GROUP_MARKER_ATTR: name, CONFIG_ATTR: text, CONFIG_TYPE_ATTR: kind},
                  scratch=_scratch(store, name))


def ensure_plain_group(path: Path) -> None:
    """Make `path` a zarr group without arrays, unless it already is a zarr node."""
    meta = path / "zarr.json"
    if not meta.is_file():
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".zarr.json.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
        os.replace(tmp, meta)


def list_groups(store: Path) -> list[str]:
    """Names of the sub-groups written through `write_group` (and legacy `eval` / `vocab` ones), sorted."""
    out = []
    for meta in sorted(store.glob("*/zarr.json")) + sorted(store.glob("*/*/zarr.json")):
        try:
            node = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        rel = meta.parent.relative_to(store).as_posix()
        attrs = node.get("attributes") or {}
        if node.get("node_type") == "group" and (GROUP_MARKER_ATTR in attrs or rel in _LEGACY):
            out.append(rel)
    return sorted(out)


def read_group(store: Path, name: str) -> xr.Dataset:
    """Sub-group `name` as a lazy Dataset; StoreError naming the groups there if it is absent."""
    path = store.joinpath(*name.split("/"))
    if not path.exists():  # a replacement crashed between its two renames: the old copy is still whole, aside
        path = next(iter(sorted(_scratch(store, name).parent.glob(f"{_scratch(store, name).name}.old-*"))), path)
    if not (path / "zarr.json").is_file():
        have = ", ".join(list_groups(store)) or "none"
        raise StoreError(f"store {store} has no group {name!r} (groups: {have})")
    return xr.open_zarr(path, consolidated=False, zarr_format=3)


def group_config(dataset: xr.Dataset) -> Any:
    """The config saved with a group (a dict), or None."""
    return json.loads(dataset.attrs.get(CONFIG_ATTR, "null"))
