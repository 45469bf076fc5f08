"""Typed, versioned result datasets: an evaluation, an intervention run, an analysis. One writer and one reader each.

Every result carries its kind (`visblind_result`) and schema version (`visblind_result_schema`) in its attrs; a
reader refuses another kind, a newer schema or a dataset missing its variables in one line, as TraceStore does.
A result written before these attrs existed is read when it holds its kind's variables (schema 0).

An intervention run (`interventions run GRID --out RUN`) is the folder RUN holding `grid.json` and `results.zarr`:

    dims     condition (the grid's conditions, `none` first), example, layer (with `visual_attention` only)
    vars     logprob, correct, follows_mismatched, visually_dependent [condition, example] float (NaN: undefined),
             done [condition, example] bool (the chunk is written), visual_attention [condition, example, layer]
    coords   condition, intervention / params (per condition), example, example_lang / example_question_type /
             example_image_dependent / example_group (probe.vocab: per-example fields of a result)

`RunWriter` creates it crash-safely and writes it chunk by chunk, under the folder's one-writer lock;
`read_run` reads it; `run_summary` tabulates it per condition × language with probe.eval's cluster bootstrap.
"""

from __future__ import annotations

import errno
import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from probe.store.schema import StoreError

KIND_ATTR = "visblind_result"
SCHEMA_ATTR = "visblind_result_schema"
EVALUATION, RUN, ANALYSIS = "evaluation", "run", "analysis"
SCHEMAS: dict[str, int] = {EVALUATION: 1, RUN: 1, ANALYSIS: 1}
# the variables that make a dataset of each kind (also how a result from before the attrs is recognised)
REQUIRED: dict[str, tuple[str, ...]] = {
    EVALUATION: ("correct", "visually_dependent", "accuracy", "visual_dependence"),
    RUN: ("logprob", "correct", "follows_mismatched", "visually_dependent", "done"),
    ANALYSIS: (),
}
RUN_VARIABLES: tuple[str, ...] = ("logprob", "correct", "follows_mismatched", "visually_dependent")
RUN_RESULTS = "results.zarr"
RUN_CONFIG = "grid.json"


class ResultError(StoreError):
    """A result dataset that this visblind cannot read as asked (one line saying what and where)."""


def stamp(ds: xr.Dataset, kind: str) -> xr.Dataset:
    """`ds` with its kind and this visblind's schema version of that kind in its attrs (a shallow copy)."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown result kind {kind!r}; known: {', '.join(SCHEMAS)}")
    out = ds.copy()
    out.attrs = {**ds.attrs, KIND_ATTR: kind, SCHEMA_ATTR: SCHEMAS[kind]}
    return out


def check(ds: xr.Dataset, kind: str, where: str | Path) -> xr.Dataset:
    """`ds` if it is a readable result of `kind`; ResultError (one line naming `where`) if not."""
    got = ds.attrs.get(KIND_ATTR)
    if got is not None and got != kind:
        raise ResultError(f"{where} holds a{'n' if got[0] in 'aeiou' else ''} {got} result, not a{'n' if kind[0] in 'aeiou' else ''} {kind} result")
    try:
        version = int(ds.attrs.get(SCHEMA_ATTR, 0))
    except (TypeError, ValueError):
        raise ResultError(f"{where}: unreadable result schema version {ds.attrs.get(SCHEMA_ATTR)!r}") from None
    if version > SCHEMAS[kind]:
        raise ResultError(f"{where} has {kind} result schema version {version}; this visblind reads up to "
                          f"{SCHEMAS[kind]}: upgrade visblind to read it")
    missing = [v for v in REQUIRED[kind] if v not in ds.variables]
    if missing:
        raise ResultError(f"{where} is not a{'n' if kind[0] in 'aeiou' else ''} {kind} result: it lacks "
                          f"{', '.join(missing)}")
    return ds


# --- intervention runs --------------------------------------------------------------------------------------------


def run_results_path(path: str | Path) -> Path:
    """The results.zarr of a run given as its folder (RUN) or as RUN/results.zarr itself."""
    path = Path(path)
    return path if path.name == RUN_RESULTS or (path / "zarr.json").is_file() else path / RUN_RESULTS


def read_run(path: str | Path, *, group: str | None = None, load: bool = True) -> xr.Dataset:
    """An intervention run: folder RUN (or RUN/results.zarr), or a store's group `group` (`runs/<name>`)."""
    if group:
        from probe.store import TraceStore

        ds, where = TraceStore.open(path).read_group(group), f"{path}::{group}"
    else:
        zpath = run_results_path(path)
        if not (zpath / "zarr.json").is_file():
            raise ResultError(f"{path} holds no intervention run (no {RUN_RESULTS}; run `interventions run GRID --out "
                              f"{path}`)")
        ds, where = xr.open_zarr(zpath, consolidated=False), str(path)
    ds = check(ds, RUN, where)
    return ds.load() if load else ds


class RunWriter:
    """Writes one run folder: creates results.zarr from a template aside then renames it into place, writes each
    (condition, example chunk) and then marks it done, all while holding the folder's one-writer lock.

    A second writer of the same folder is refused in one line before any work (`RunWriter(folder).lock()`); the OS
    releases the lock when its holder dies, however it dies.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.store = self.folder / RUN_RESULTS
        self._lock: Any = None

    def lock(self) -> "RunWriter":
        """Take the folder's writer lock (the folder is created); ResultError-kind StoreLockedError if it is held."""
        from probe.store.lock import StoreLock

        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = StoreLock(self.folder, "interventions run", what="").acquire()
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunWriter":
        return self.lock()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def prepare(self, template: xr.Dataset, encoding: Mapping[str, Any]) -> np.ndarray:
        """Create results.zarr from `template` unless a readable one is there; returns its `done` mask [condition,
        example]. A results.zarr another layout (other conditions or examples) is refused in one line."""
        partial = self.folder / (RUN_RESULTS + ".partial")
        if partial.exists():  # a kill while creating it (or two writers before the lock existed): never complete
            shutil.rmtree(partial)
        if self.store.exists():
            try:
                ds = check(xr.open_zarr(self.store, consolidated=False), RUN, self.store)
            except (ResultError, OSError, ValueError, KeyError) as err:
                raise ResultError(f"{self.store} is not a usable run ({_first_line(err)}); delete it to start the run "
                                  "again, or choose a new --out") from None
            for dim in ("condition", "example"):
                have, want = [str(x) for x in ds[dim].values], [str(x) for x in template[dim].values]
                if have != want:
                    raise ResultError(f"{self.store} holds other {dim}s than this grid's; delete it to start again, "
                                      "or choose a new --out")
            return ds["done"].values.copy()
        stamped = stamp(template, RUN)
        with _disk_errors(self.folder):
            stamped.to_zarr(partial, mode="w", consolidated=False, encoding=dict(encoding))
            partial.rename(self.store)
        return np.zeros((template.sizes["condition"], template.sizes["example"]), dtype=bool)

    def write(self, condition: int, examples: slice, values: Mapping[str, np.ndarray]) -> None:
        """Store one condition's values over `examples`, then mark them done (a kill between the two redoes it)."""
        dims = ("condition", "example", "layer")
        region = xr.Dataset({k: (dims[: v.ndim + 1], v[None]) for k, v in values.items()})
        where = {"condition": slice(condition, condition + 1), "example": examples}
        marker = xr.Dataset({"done": (dims[:2], np.ones((1, examples.stop - examples.start), dtype=bool))})
        with _disk_errors(self.folder):
            region.to_zarr(self.store, region=where, consolidated=False)
            marker.to_zarr(self.store, region=where, consolidated=False)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class _disk_errors:
    """A full disk (or quota) while writing becomes one line; what was already marked done stays valid."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> bool:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResultError(f"no space left on the device writing {self.folder}: free some space and run the same "
                              "command again (it resumes; chunks already marked done are kept)") from None
        return False


def run_summary(ds: xr.Dataset, *, by: str = "lang", n_boot: int = 1000, seed: int = 0,
                ci: float = 0.95) -> xr.Dataset:
    """Per condition × `by` (a shared example field, probe.vocab): visual dependence (image-dependent examples with
    a mismatch partner), accuracy on image-dependent and on text-answerable examples, each a share with a percentile
    interval from probe.eval's cluster bootstrap over the independent unit (`example_group`).

    Undefined entries (NaN: no candidates, no partner, a chunk not yet done) are left out per condition.
    """
    from probe.analysis.stats import BootstrapConfig
    from probe.eval.intervals import cluster_share_ci
    from probe.vocab import example_field

    cfg = BootstrapConfig(n_boot=n_boot, seed=seed, ci=ci)
    level_of = example_field(ds, by)
    dep = example_field(ds, "image_dependent")
    units = example_field(ds, "group")
    levels = sorted(set(level_of.tolist()))
    stats = {"visual_dependence": ("visually_dependent", True), "accuracy_image": ("correct", True),
             "accuracy_text": ("correct", False)}
    n_cond = ds.sizes["condition"]
    out = {f"{k}{s}": np.full((n_cond, len(levels)), np.nan) for k in stats for s in ("", "_low", "_high")}
    counts = {f"n_{k}": np.zeros((n_cond, len(levels)), dtype=np.int64) for k in stats}
    done = ds["done"].values.astype(bool)
    for key, (var, image) in stats.items():
        values = ds[var].values.astype(np.float64)
        for j, level in enumerate(levels):
            rows = (level_of == level) & (dep == image)
            for c in range(n_cond):
                m = rows & done[c] & np.isfinite(values[c])
                counts[f"n_{key}"][c, j] = int(m.sum())
                if m.any():
                    share, lo, hi = cluster_share_ci(values[c, m][None], units[m], cfg)
                    out[key][c, j], out[f"{key}_low"][c, j], out[f"{key}_high"][c, j] = share[0], lo[0], hi[0]
    strs = lambda name: np.array([str(v) for v in ds[name].values.tolist()], dtype=str)  # noqa: E731
    coords: dict[str, Any] = {"condition": strs("condition"), by: levels}
    for name in ("intervention", "params"):
        if name in ds.coords:
            coords[name] = ("condition", strs(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return xr.Dataset({k: (("condition", by), v) for k, v in {**out, **counts}.items()}, coords=coords,
                          attrs={"interval": json.dumps({"n_boot": n_boot, "seed": seed, "ci": ci,
                                                         "unit": "example_group (probe.vocab.unit_of)"})})
