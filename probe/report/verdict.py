"""The report's headline: which candidate cause of visual blindness moved, by how much, with intervals.

One function per registered analysis (named in `probe.analysis.registry`), each taking that
analysis's result (or its Skipped note) and the AnalysisConfig; `verdict` loops over the registry.
Claims about layers rest on simultaneous bands over layers, so picking the layers that moved
does not invalidate their intervals; best-layer probes are labelled exploratory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from probe.vocab import to_str
from probe.analysis.pipeline import Skipped
from probe.analysis import registry
from probe.analysis.stats import BootstrapConfig, bootstrap_scalar_ci

# a probe "still decodes" a label when it keeps at least half of its selectivity (accuracy above its shuffled-label control)
KEPT_FRACTION = 0.5
# a label counts as decodable before fine-tuning when its probe beats the shuffled-label control by this much
MIN_SELECTIVITY = 0.1


def _why(result: Any) -> str:
    return str(result) if isinstance(result, Skipped) else "not computed"


def _boot(config: Any) -> BootstrapConfig:
    return getattr(config, "bootstrap", config)


def behaviour_lines(ev: Any, config: Any) -> list[str]:
    """Visual dependence of image-dependent questions per language, before → after, with cluster-bootstrap CIs."""
    if not isinstance(ev, dict):
        return []
    before, after = ev.get("before"), ev.get("after")
    if before is None or after is None or "visually_dependent" not in before:
        return []
    lines = []
    for lang in to_str(before["lang"].values):
        vals = []
        for ds in (before, after):
            keep = (to_str(ds["example_lang"].values) == lang) & ds["example_image_dependent"].values.astype(bool)
            if "has_partner" in ds:  # without a mismatched partner, following the image is not measurable
                keep &= ds["has_partner"].values.astype(bool)
            groups = to_str(ds["example_group"].values)[keep] if "example_group" in ds.coords else None
            vals.append(bootstrap_scalar_ci(ds["visually_dependent"].values[keep].astype(float), _boot(config), groups))
        (b, bl, bh), (a, al, ah) = vals
        lines.append(f"behaviour ({lang}): visual dependence {b * 100:.1f}% [{bl * 100:.1f}–{bh * 100:.1f}] → "
                     f"{a * 100:.1f}% [{al * 100:.1f}–{ah * 100:.1f}]")
    return lines


def attention_lines(res: Any, config: Any = None, source: str = "last_prompt", threshold: float = 0.2) -> list[str]:
    """H1: did the visual share from `source` collapse (simultaneous band over layers entirely below -threshold)?"""
    if res is None or isinstance(res, Skipped):
        return [f"attention (H1): not measured ({_why(res)})"]
    c: xr.Dataset = res["layers"] if isinstance(res, dict) else res
    if source not in c["source"].values:
        return [f"attention (H1): not measured (no {source} source)"]
    rel = c["layer_rel_change"].sel(source=source).values
    lo = c["layer_rel_sim_low"].sel(source=source).values
    hi = c["layer_rel_sim_high"].sel(source=source).values
    layers = c["layer"].values
    fell = [int(layer) for layer, h in zip(layers, hi) if h < -threshold]
    rose = [int(layer) for layer, low in zip(layers, lo) if low > 0]
    parts = [f"L{int(layer)} {r * 100:+.0f}% [{low * 100:+.0f}, {h * 100:+.0f}]" for layer, r, low, h in zip(layers, rel, lo, hi)]
    verdict = (f"collapsed (≥{threshold * 100:.0f}% drop, simultaneous CI) in layer(s) {fell}" if fell
               else f"no layer dropped by ≥{threshold * 100:.0f}% (simultaneous CI)")
    if rose:
        verdict += f"; rose in layer(s) {rose}"
    units = c.attrs.get("resampled", "example")
    return [f"attention (H1), visual share from {source}: {verdict} — " + ", ".join(parts)
            + f" ({c.attrs.get('ci', 0.95) * 100:.0f}% band over layers, resampling {units.split(' ')[0]}s)"]


def sinks_lines(s: Any, config: Any = None) -> list[str]:
    """Visual attention sinks: found or not (dims detected on the base store)."""
    if s is None or isinstance(s, Skipped):
        return [f"sinks: not measured ({_why(s)})"]
    dims = s.attrs.get("sink_dims") or []
    dense = s.attrs.get("dense_dims") or []
    if not dims:
        extra = f" (dense outlier dims {dense} are not sink carriers)" if dense else ""
        return ["sinks: no massive-activation dimension in the base model's residual stream, so no visual sink "
                f"tokens: all visual attention is non-sink (the sink hypothesis does not apply to this model){extra}"]
    return [f"sinks: dims {list(dims)} detected on the base store, used for both (see the sinks section for shares)"]


def keyspace_lines(ks: Any, config: Any = None) -> list[str]:
    """Key-space OOD: mean over layers of Mahalanobis distance and linear AUC, before → after."""
    if ks is None or isinstance(ks, Skipped):
        return [f"key space: not measured ({_why(ks)})"]
    m = ks.sel(lang="all").mean(("layer", "kv_head"), skipna=True)
    b, a = m.sel(store="before"), m.sel(store="after")
    maha = ks["mahalanobis"].sel(lang="all").mean("kv_head", skipna=True)
    up = int((maha.sel(store="after") > maha.sel(store="before")).sum())
    return [f"key space: visual keys vs text keys, Mahalanobis {float(b['mahalanobis']):.1f} → {float(a['mahalanobis']):.1f} "
            f"(text-to-text baseline {float(b['mahalanobis_text']):.1f} → {float(a['mahalanobis_text']):.1f}; larger after in "
            f"{up} of {maha.sizes['layer']} layers), linear AUC {float(b['auc']):.2f} → {float(a['auc']):.2f} (no difference: 0.5)"]


def probe_lines(pr: Any, config: Any = None, site: str = "last_prompt") -> list[str]:
    """H2: per label, still decodable at `site` after (information unused) or lost (information gone)? Exploratory."""
    if pr is None or isinstance(pr, Skipped) or site not in pr["site"].values:
        return [f"probes (H2): not measured ({_why(pr)})"]
    lines = []
    for lab in pr["label"].values:
        sel = pr.sel(site=site, label=lab)
        best = {}
        for st in ("before", "after"):
            acc = sel["accuracy"].sel(store=st).values
            if not np.isfinite(acc).any():
                break
            i = int(np.nanargmax(acc))
            best[st] = (float(acc[i]), float(sel["control_accuracy"].sel(store=st).values[i]))
        if len(best) < 2 or best["before"][0] - best["before"][1] < MIN_SELECTIVITY:
            continue  # not decodable even before: says nothing about gone vs unused
        sel_b, sel_a = (best[s][0] - best[s][1] for s in ("before", "after"))
        kept = sel_a >= KEPT_FRACTION * sel_b
        word = "still decodable (information present)" if kept else "no longer decodable (information lost)"
        lines.append(f"probes (H2, exploratory: best layer of each store): {lab} at the {site} residual "
                     f"{best['before'][0]:.2f} → {best['after'][0]:.2f} (shuffled-label control {best['before'][1]:.2f} → "
                     f"{best['after'][1]:.2f}; selectivity {sel_b:.2f} → {sel_a:.2f}; group CV): {word}")
    return lines or [f"probes (H2): no label is decodable {MIN_SELECTIVITY} above its shuffled-label control at {site} before fine-tuning"]


def drift_lines(d: Any, config: Any) -> list[str]:
    """H3: projector output similarity base vs fine-tuned with cluster-bootstrap CIs and no-relation values."""
    if d is None or isinstance(d, Skipped):
        return [f"projector drift (H3): not measured ({_why(d)})"]
    groups = to_str(d["group"].values) if "group" in d.coords else None
    cfg = _boot(config)
    cos = bootstrap_scalar_ci(d["cosine"].values, cfg, groups)
    cka = bootstrap_scalar_ci(d["cka"].values, cfg, groups)
    null = float(np.nanmean(d["cka_null"].values)) if np.isfinite(d["cka_null"].values).any() else float("nan")
    mmd = float(d["mmd2"])
    mmd_note = " (unbiased estimate: values at or below 0 mean no detectable difference)" if mmd <= 0 else ""
    what = d.attrs.get("resampled", "example").split(" ")[0]
    return [f"projector drift (H3): per-example cosine {cos[0]:.3f} [{cos[1]:.3f}–{cos[2]:.3f}] (1 = unchanged, 0 = unrelated), "
            f"unbiased linear CKA {cka[0]:.3f} [{cka[1]:.3f}–{cka[2]:.3f}] (1 = unchanged up to rotation and scale; "
            f"no-relation null {null:.3f}), MMD² {mmd:.4f}{mmd_note}; intervals resample {what}s"]


def verdict(res: dict[str, Any], config: Any) -> list[str]:
    """One or more lines per registered analysis that has a verdict, behaviour first."""
    from probe.report.presenters import presenter  # presenters imports this module's line functions

    lines: list[str] = []
    for analysis in registry.ANALYSES:
        fn = presenter(analysis.name).verdict
        if fn is not None and analysis.pair is not None:
            lines += fn(res.get(analysis.name), config)
    return lines


def saved_verdict(before: Any, after: Any, recompute: bool = False) -> list[str]:
    """The verdict of the comparison `probe compare BEFORE AFTER --save` wrote into AFTER (the lines it printed, kept
    with its results; `recompute`: drawn again from the saved result groups); SavedResultsError (one line) when none
    was saved for this pair as it is now."""
    import json

    from probe.analysis.saved import COMPARE, load_results, saved_index

    if not recompute:
        index = saved_index(after, COMPARE, {"before": before, "after": after})
        if "verdict" in index.attrs:
            return json.loads(index.attrs["verdict"])
    from probe.report.presenters import presenter

    names = {a.name for a in registry.ANALYSES if presenter(a.name).verdict is not None and a.pair is not None}
    res, config = load_results(after, COMPARE, {"before": before, "after": after}, names)
    return verdict(res, config)
