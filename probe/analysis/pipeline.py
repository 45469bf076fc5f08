"""Run every analysis a store (or a pair of stores) supports; sections lacking inputs are skipped with a note."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from probe.analysis._io import as_dataset, has, open_eval, open_group
from probe.analysis.attention import attention_collapse, share_change, top_changed_heads
from probe.analysis.cka import CKAMemoryError, cka_matrix, pooled_cka
from probe.analysis.drift import projector_drift, vocab_drift
from probe.analysis.keyspace import KeyspaceConfig, compare_keyspace, keyspace_ood
from probe.analysis.mir import modality_integration_rate
from probe.analysis.probes import ProbeConfig, compare_probes, label_names, linear_probes
from probe.analysis.sinks import sink_collapse, sink_summary
from probe.analysis.stats import BootstrapConfig, bootstrap_mean_ci


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


class Skipped(str):
    """A one-line note saying why a section was not computed."""


def _run(name: str, needs: list[str], stores: list[xr.Dataset], fn: Callable[[], Any]) -> Any:
    """fn() when every store holds `needs`, else a Skipped note."""
    for ds in stores:
        missing = [n for n in needs if not has(ds, n)]
        if missing:
            return Skipped(f"{name}: skipped, store lacks {', '.join(missing)}")
    try:
        return fn()
    except CKAMemoryError as err:
        return Skipped(f"{name}: skipped, {err}")


def _visual_share_mean(ds: xr.Dataset, config: BootstrapConfig) -> xr.Dataset:
    """Mean visual share per layer × head × source with a bootstrap CI over examples."""
    v = ds["attn_share"].sel(segment="visual").transpose("example", "layer", "head", "source")
    x = v.values
    mean, lo, hi = bootstrap_mean_ci(x.reshape(len(x), -1), config)
    shape = x.shape[1:]
    dims = ("layer", "head", "source")
    coords = {d: v[d].values for d in dims}
    return xr.Dataset({"mean": (dims, mean.reshape(shape)), "low": (dims, lo.reshape(shape)), "high": (dims, hi.reshape(shape))}, coords=coords)


def analyze(ds: Any, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Every single-store analysis: name -> xarray result, or a Skipped note."""
    eval_ds = open_eval(ds)
    ds = as_dataset(ds)
    s = [ds]
    out: dict[str, Any] = {
        "visual_share": _run("visual share", ["attn_share"], s, lambda: _visual_share_mean(ds, config.bootstrap)),
        "sinks": _run("attention sinks", ["attn_pattern", "hook_resid_post_tokens", "segment_ids"], s, lambda: sink_summary(ds)),
        "keyspace": _run("key-space OOD", ["hook_rot_k", "segment_ids"], s, lambda: keyspace_ood(ds, config.keyspace)),
        "probes": (
            _run("linear probes", [], s, lambda: linear_probes(ds, config=config.probes))
            if label_names(ds) and (has(ds, "hook_resid_post") or has(ds, "hook_resid_post_pooled"))
            else Skipped("linear probes: skipped, store lacks label_* coordinates or residuals")
        ),
        "mir": _run("modality integration rate", ["hook_resid_post_tokens", "segment_ids"], s, lambda: modality_integration_rate(ds)),
        "cka": _run("CKA layer × layer", ["hook_resid_post"], s, lambda: cka_matrix(ds, site="last_prompt")),
        "projector_vision_cka": _run("CKA projector vs vision tower", ["projector_out", "vision_out"], s, lambda: pooled_cka(ds)),
    }
    out["eval"] = eval_ds if eval_ds is not None else Skipped("behavioural evaluation: skipped, store has no eval group")
    return out


def _significant_band(collapse: xr.Dataset, source: str) -> list[int]:
    """Layers whose head-mean CI excludes 0, with the sign of the largest change; all layers if none."""
    rel = collapse["layer_rel_change"].sel(source=source).values
    lo = collapse["layer_rel_low"].sel(source=source).values
    hi = collapse["layer_rel_high"].sel(source=source).values
    layers = collapse["layer"].values
    sig = (lo > 0) | (hi < 0)
    if not sig.any() or not np.isfinite(rel).any():
        return [int(x) for x in layers]
    sign = np.sign(rel[np.nanargmax(np.where(sig, np.abs(rel), -np.inf))])
    return [int(layer) for layer, r, ok in zip(layers, rel, sig) if ok and np.sign(r) == sign]


def compare_stores(before: Any, after: Any, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Every before-vs-after analysis: name -> xarray result / dict, or a Skipped note."""
    eval_b, eval_a = open_eval(before), open_eval(after)
    b, a = as_dataset(before), as_dataset(after)
    s = [b, a]
    out: dict[str, Any] = {}
    out["collapse"] = _run("attention collapse", ["attn_share"], s, lambda: attention_collapse(b, a, config.bootstrap))
    if not isinstance(out["collapse"], Skipped):
        c = out["collapse"]
        out["top_heads"] = top_changed_heads(c, "last_prompt" if "last_prompt" in c["source"].values else str(c["source"].values[0]), config.top_k_heads)
        bands = {}
        for src in c["source"].values:
            band = _significant_band(c, str(src))
            bands[str(src)] = {"layers": band, **share_change(b, a, band, str(src), config.bootstrap)}
        out["collapse_band"] = bands
    out["sinks"] = _run("attention sinks", ["attn_pattern", "hook_resid_post_tokens", "segment_ids"], s, lambda: sink_collapse(b, a, config.bootstrap))
    out["keyspace"] = _run("key-space OOD", ["hook_rot_k", "segment_ids"], s, lambda: compare_keyspace(b, a, config.keyspace))
    if label_names(b) and label_names(a):
        out["probes"] = _run("linear probes", [], s, lambda: compare_probes(b, a, config.probes))
    else:
        out["probes"] = Skipped("linear probes: skipped, stores lack label_* coordinates")
    out["drift"] = _run("projector drift", ["projector_out"], s, lambda: projector_drift(b, a))
    if open_group(before, "vocab") is not None and open_group(after, "vocab") is not None:
        out["vocab_drift"] = _run("projector drift vs vocabulary", ["projector_out"], s, lambda: vocab_drift(before, after))
    else:
        out["vocab_drift"] = Skipped("projector drift vs vocabulary: skipped, stores lack the 'vocab' group "
                                     "(capture with CaptureSpec(vocab=True))")
    out["mir"] = _run("modality integration rate", ["hook_resid_post_tokens", "segment_ids"], s, lambda: _mir_pair(b, a))
    out["cka"] = _run("CKA before vs after", ["hook_resid_post"], s, lambda: cka_matrix(b, a, site="last_prompt"))
    out["projector_vision_cka"] = _run(
        "CKA projector vs vision tower", ["projector_out", "vision_out"], s,
        lambda: {"before": pooled_cka(b), "after": pooled_cka(a)},
    )
    if eval_b is not None or eval_a is not None:
        out["eval"] = {"before": eval_b, "after": eval_a}
    else:
        out["eval"] = Skipped("behavioural evaluation: skipped, stores have no eval group")
    return out


def _mir_pair(b: xr.Dataset, a: xr.Dataset) -> xr.DataArray:
    """Per-layer MIR of both stores on a `store` dim; overall values in attrs."""
    mb, ma = modality_integration_rate(b), modality_integration_rate(a)
    out = xr.concat([mb, ma], dim="store", join="inner").assign_coords(store=["before", "after"])
    out.attrs.update(overall_before=mb.attrs["overall"], overall_after=ma.attrs["overall"])
    return out
