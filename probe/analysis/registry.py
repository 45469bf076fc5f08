"""Every analysis, one entry each: what it needs and how it is computed.

The pipeline (`analyze`, `compare_stores`), the HTML report and the headline loop over `ANALYSES`;
adding an analysis is one entry here. How a result is shown (figures, readings, verdict lines) is the
report's: one entry of the same name in `probe.report.presenters.PRESENTERS` (this package never
imports `probe.report` or plotly; an import-linter contract keeps it so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xarray as xr

from probe.analysis._io import has, open_eval, open_group
from probe.vocab import to_str
from probe.analysis.attention import attention_collapse, changed_band, top_changed_heads
from probe.analysis.cka import cka_matrix, pooled_cka_with_null
from probe.analysis.drift import projector_drift, vocab_drift
from probe.analysis.keyspace import compare_keyspace, keyspace_ood
from probe.analysis.mir import modality_integration_rate
from probe.analysis.probes import compare_probes, label_names, linear_probes
from probe.analysis.sinks import sink_collapse, sink_summary
from probe.analysis.stats import bootstrap_mean_ci, groups_of


@dataclass(frozen=True)
class Inputs:
    """What an analysis sees: the lazy datasets, the objects given (paths keep their groups), and the config."""

    before: xr.Dataset
    after: xr.Dataset | None
    before_obj: Any
    after_obj: Any
    config: Any  # AnalysisConfig (pipeline.py), kept untyped here to avoid an import cycle


@dataclass(frozen=True)
class Analysis:
    """One analysis. `single` / `pair` compute it on one store / a before-after pair (None = not offered)."""

    name: str
    heading: str
    needs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # store groups it reads (eval, vocab)
    precondition: Callable[[xr.Dataset], str | None] | None = None  # a reason to skip, or None
    single: Callable[[Inputs], Any] | None = None
    pair: Callable[[Inputs], Any] | None = None

    def __post_init__(self) -> None:
        if self.single is None and self.pair is None:
            raise ValueError(f"analysis {self.name!r} computes nothing (give single and/or pair)")


def _labels(ds: xr.Dataset) -> str | None:
    if not label_names(ds):
        return "store lacks label_* coordinates"
    if not (has(ds, "hook_resid_post") or has(ds, "hook_resid_post_pooled")):
        return "store lacks hook_resid_post and hook_resid_post_pooled"
    return None


def _visual_share(x: Inputs) -> xr.Dataset:
    """Mean visual share per layer × head × source with a cluster-bootstrap CI."""
    ds = x.before
    v = ds["attn_share"].sel(segment="visual").transpose("example", "layer", "head", "source")
    arr = v.values
    groups, what = groups_of(ds)
    mean, lo, hi = bootstrap_mean_ci(arr.reshape(len(arr), -1), x.config.bootstrap, groups)
    dims = ("layer", "head", "source")
    shape = arr.shape[1:]
    return xr.Dataset({"mean": (dims, mean.reshape(shape)), "low": (dims, lo.reshape(shape)), "high": (dims, hi.reshape(shape))},
                      coords={d: v[d].values for d in dims}, attrs={"resampled": what})


def _collapse(x: Inputs) -> dict[str, Any]:
    c = attention_collapse(x.before, x.after, x.config.bootstrap)
    src = "last_prompt" if "last_prompt" in c["source"].values else str(c["source"].values[0])
    bands = {str(s): changed_band(c, x.before, x.after, str(s), x.config.bootstrap) for s in c["source"].values}
    return {"layers": c, "band": bands, "top_heads": top_changed_heads(c, src, x.config.top_k_heads)}


def _sinks_pair(x: Inputs) -> xr.Dataset:
    return sink_collapse(x.before, x.after, x.config.bootstrap)


def _eval_with_groups(obj: Any, ds: xr.Dataset) -> xr.Dataset | None:
    """The store's eval group, with `example_group` (the store's resampling unit) for its examples when recorded."""
    ev = open_eval(obj)
    if ev is None or "example" not in ev.dims or "group" not in ds.coords or "example_group" in ev.coords:
        return ev
    ids, groups = to_str(ds["example"].values), to_str(ds["group"].values)
    unit = dict(zip(ids, groups))
    return ev.assign_coords(example_group=("example", [unit.get(e, e) for e in to_str(ev["example"].values)]))


def _eval_single(x: Inputs) -> xr.Dataset:
    return _eval_with_groups(x.before_obj, x.before)


def _eval_pair(x: Inputs) -> dict[str, xr.Dataset | None]:
    return {"before": _eval_with_groups(x.before_obj, x.before), "after": _eval_with_groups(x.after_obj, x.after)}


def _mir_pair(x: Inputs) -> xr.DataArray:
    mb, ma = modality_integration_rate(x.before), modality_integration_rate(x.after)
    out = xr.concat([mb, ma], dim="store", join="inner").assign_coords(store=["before", "after"])
    out.attrs.update(mb.attrs)
    out.attrs.update(overall_before=mb.attrs["overall"], overall_after=ma.attrs["overall"])
    return out


ANALYSES: tuple[Analysis, ...] = (
    Analysis("eval", "Behavioural visual dependence", groups=("eval",), single=_eval_single, pair=_eval_pair),
    Analysis("visual_share", "Visual attention share", ("attn_share",), single=_visual_share),
    Analysis("collapse", "Visual attention collapse", ("attn_share",), pair=_collapse),
    Analysis("sinks", "Visual attention sinks", ("attn_pattern", "hook_resid_post_tokens", "segment_ids"),
             single=lambda x: sink_summary(x.before), pair=_sinks_pair),
    Analysis("keyspace", "Key-space OOD of visual keys", ("hook_rot_k", "segment_ids"),
             single=lambda x: keyspace_ood(x.before, x.config.keyspace),
             pair=lambda x: compare_keyspace(x.before, x.after, x.config.keyspace)),
    Analysis("probes", "Linear probes (information gone vs unused)", precondition=_labels,
             single=lambda x: linear_probes(x.before, config=x.config.probes),
             pair=lambda x: compare_probes(x.before, x.after, x.config.probes)),
    Analysis("drift", "Projector drift", ("projector_out",), pair=lambda x: projector_drift(x.before, x.after)),
    Analysis("vocab_drift", "Projector drift relative to the vocabulary", ("projector_out",), groups=("vocab",),
             pair=lambda x: vocab_drift(x.before_obj, x.after_obj)),
    Analysis("mir", "Modality integration rate", ("hook_resid_post_tokens", "segment_ids"),
             single=lambda x: modality_integration_rate(x.before), pair=_mir_pair),
    Analysis("cka", "CKA of the last-prompt residual", ("hook_resid_post",),
             single=lambda x: cka_matrix(x.before, site="last_prompt", unbiased=True),
             pair=lambda x: cka_matrix(x.before, x.after, site="last_prompt", unbiased=True)),
    Analysis("projector_vision_cka", "CKA projector output vs vision tower", ("projector_out", "vision_out"),
             single=lambda x: pooled_cka_with_null(x.before),
             pair=lambda x: {"before": pooled_cka_with_null(x.before), "after": pooled_cka_with_null(x.after)}),
)


def by_name(name: str) -> Analysis:
    """The registered analysis called `name`."""
    for a in ANALYSES:
        if a.name == name:
            return a
    raise KeyError(f"no analysis named {name!r}; registered: {[a.name for a in ANALYSES]}")


def skip_reason(analysis: Analysis, datasets: list[xr.Dataset], objects: list[Any]) -> str | None:
    """Why `analysis` cannot run on these stores (missing variables, groups or labels), or None."""
    for ds in datasets:
        missing = [n for n in analysis.needs if not has(ds, n)]
        if missing:
            return f"store lacks {', '.join(missing)}"
    for g in analysis.groups:
        if any(open_group(o, g) is None for o in objects):
            hint = " (capture with CaptureSpec(vocab=True))" if g == "vocab" else " (run `probe eval`)" if g == "eval" else ""
            return f"{'store has no' if len(objects) == 1 else 'a store lacks the'} '{g}' group{hint}"
    if analysis.precondition is not None:
        for ds in datasets:
            why = analysis.precondition(ds)
            if why:
                return why
    return None
