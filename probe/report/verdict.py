"""The report's headline: which candidate cause of visual blindness moved, by how much, with intervals."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from probe.analysis._io import to_str
from probe.analysis.pipeline import Skipped
from probe.analysis.stats import BootstrapConfig, bootstrap_scalar_ci

# a probe "still decodes" a label when it keeps at least half of its accuracy above chance
KEPT_FRACTION = 0.5


def _why(result: Any) -> str:
    return str(result) if isinstance(result, Skipped) else "not computed"


def behaviour_lines(ev: dict[str, xr.Dataset | None], config: BootstrapConfig) -> list[str]:
    """Visual dependence of image-dependent questions per language, before → after, with bootstrap CIs."""
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
            vals.append(bootstrap_scalar_ci(ds["visually_dependent"].values[keep].astype(float), config))
        (b, bl, bh), (a, al, ah) = vals
        lines.append(f"behaviour ({lang}): visual dependence {b * 100:.1f}% [{bl * 100:.1f}–{bh * 100:.1f}] → "
                     f"{a * 100:.1f}% [{al * 100:.1f}–{ah * 100:.1f}]")
    return lines


def attention_line(res: dict[str, Any], source: str = "last_prompt", threshold: float = 0.2) -> str:
    """H1: did the visual share from `source` collapse (CI entirely below -threshold) in some layer?"""
    c = res.get("collapse")
    if c is None or isinstance(c, Skipped) or source not in c["source"].values:
        return f"attention (H1): not measured ({_why(c)})"
    rel = c["layer_rel_change"].sel(source=source).values
    hi = c["layer_rel_high"].sel(source=source).values
    lo = c["layer_rel_low"].sel(source=source).values
    layers = c["layer"].values
    fell = [int(layer) for layer, h in zip(layers, hi) if h < -threshold]
    rose = [int(layer) for layer, low in zip(layers, lo) if low > 0]
    parts = [f"L{int(layer)} {r * 100:+.0f}% [{low * 100:+.0f}, {h * 100:+.0f}]" for layer, r, low, h in zip(layers, rel, lo, hi)]
    verdict = (f"collapsed (≥{threshold * 100:.0f}% drop, CI-wise) in layer(s) {fell}" if fell
               else f"no layer dropped by ≥{threshold * 100:.0f}% (CI-wise)")
    if rose:
        verdict += f"; rose in layer(s) {rose}"
    return f"attention (H1), visual share from {source}: {verdict} — " + ", ".join(parts)


def sinks_line(res: dict[str, Any]) -> str:
    """Visual attention sinks: found or not, and the change of the non-sink share."""
    s = res.get("sinks")
    if s is None or isinstance(s, Skipped):
        return f"sinks: not measured ({_why(s)})"
    dims_b, dims_a = s.attrs.get("sink_dims_before") or [], s.attrs.get("sink_dims_after") or []
    if not dims_b and not dims_a:
        return ("sinks: no massive-activation dimension in the residual stream before or after, so no visual sink "
                "tokens: all visual attention is non-sink (the sink hypothesis does not apply to this model)")
    return f"sinks: dims before {list(dims_b)}, after {list(dims_a)} (see the sinks section for shares)"


def keyspace_line(res: dict[str, Any]) -> str:
    """Key-space OOD: mean over layers of Mahalanobis distance and linear AUC, before → after."""
    ks = res.get("keyspace")
    if ks is None or isinstance(ks, Skipped):
        return f"key space: not measured ({_why(ks)})"
    m = ks.sel(lang="all").mean(("layer", "kv_head"), skipna=True)
    b, a = m.sel(store="before"), m.sel(store="after")
    maha = ks["mahalanobis"].sel(lang="all").mean("kv_head", skipna=True)
    up = int((maha.sel(store="after") > maha.sel(store="before")).sum())
    return (f"key space: visual keys vs text keys, Mahalanobis {float(b['mahalanobis']):.1f} → {float(a['mahalanobis']):.1f} "
            f"(text-to-text baseline {float(b['mahalanobis_text']):.1f} → {float(a['mahalanobis_text']):.1f}; larger after in "
            f"{up} of {maha.sizes['layer']} layers), linear AUC {float(b['auc']):.2f} → {float(a['auc']):.2f}")


def probe_lines(res: dict[str, Any], site: str = "last_prompt") -> list[str]:
    """H2: per label, is it still decodable at `site` after (information unused) or lost (information gone)?"""
    pr = res.get("probes")
    if pr is None or isinstance(pr, Skipped) or site not in pr["site"].values:
        return [f"probes (H2): not measured ({_why(pr)})"]
    lines = []
    for lab in pr["label"].values:
        acc = pr["accuracy"].sel(site=site, label=lab)
        ch = float(pr["chance"].sel(site=site, label=lab).max())
        best = {st: float(acc.sel(store=st).max(skipna=True)) for st in ("before", "after")}
        if not all(np.isfinite(v) for v in best.values()) or best["before"] - ch < 0.1:
            continue  # not decodable even before: says nothing about gone vs unused
        kept = (best["after"] - ch) >= KEPT_FRACTION * (best["before"] - ch)
        word = "still decodable (information present)" if kept else "no longer decodable (information lost)"
        lines.append(f"probes (H2): {lab} at the {site} residual {best['before']:.2f} → {best['after']:.2f} "
                     f"(chance {ch:.2f}, best layer, CV): {word}")
    return lines or [f"probes (H2): no label is decodable above chance + 0.1 at {site} before fine-tuning"]


def drift_line(res: dict[str, Any], config: BootstrapConfig) -> str:
    """H3: projector output similarity base vs fine-tuned with bootstrap CIs."""
    d = res.get("drift")
    if d is None or isinstance(d, Skipped):
        return f"projector drift (H3): not measured ({_why(d)})"
    cos, cka = bootstrap_scalar_ci(d["cosine"].values, config), bootstrap_scalar_ci(d["cka"].values, config)
    return (f"projector drift (H3): per-example cosine {cos[0]:.3f} [{cos[1]:.3f}–{cos[2]:.3f}], "
            f"linear CKA {cka[0]:.3f} [{cka[1]:.3f}–{cka[2]:.3f}] (1 = unchanged), MMD² {float(d['mmd2']):.4f}")


def verdict(res: dict[str, Any], config: BootstrapConfig) -> list[str]:
    """One line per candidate cause, next to the behavioural blindness."""
    ev = res.get("eval")
    lines = behaviour_lines(ev, config) if isinstance(ev, dict) else []
    return lines + [attention_line(res), sinks_line(res), keyspace_line(res), *probe_lines(res), drift_line(res, config)]
