"""One-line readings with numbers and intervals, and JSON-able views of analysis results."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from probe.analysis._io import to_str
from probe.analysis.pipeline import Skipped
from probe.analysis.stats import BootstrapConfig, bootstrap_mean_ci
from probe.report.verdict import sinks_line


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{abs(x) * 100:.1f}%"


def _band(layers: list[int]) -> str:
    if not layers:
        return "no layer"
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}–{layers[-1]}"
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(str(x) for x in layers)


def _verb(rel: float, lo: float, hi: float) -> str:
    if not np.isfinite(rel):
        return "is undefined"
    if rel == 0 and lo == 0 and hi == 0:
        return "did not change"
    word = "fell" if rel < 0 else "rose"
    lo_, hi_ = sorted((abs(lo), abs(hi))) if np.sign(lo) == np.sign(hi) else (lo, hi)
    if np.sign(lo) == np.sign(hi):
        return f"{word} {_pct(rel)} [{lo_ * 100:.1f}–{hi_ * 100:.1f}%]"
    return f"changed {rel * 100:+.1f}% [{lo * 100:+.1f}% to {hi * 100:+.1f}%] (CI includes 0)"


def reading_collapse(band: dict[str, Any], source: str, ci: float) -> str:
    """e.g. 'visual share from last_prompt at layers 2–3 fell 31% [24–38%] (0.50 → 0.35; 95% CI)'."""
    return (f"visual share from {source} at {_band(band['layers'])} {_verb(band['rel_change'], band['rel_low'], band['rel_high'])} "
            f"({band['before']:.3f} → {band['after']:.3f}; {ci * 100:.0f}% bootstrap CI)")


def reading_sinks(s: xr.Dataset, source: str) -> str:
    """Largest change of non-sink visual share, with the sink share beside it."""
    rel = s["nonsink_share_rel_change"].sel(source=source).values
    if not np.isfinite(rel).any():
        return "no visual attention sink statistics (no visual attention)"
    if not s.attrs.get("sink_dims_before") and not s.attrs.get("sink_dims_after"):
        return sinks_line({"sinks": s})
    i = int(np.nanargmax(np.abs(rel)))
    layer = int(s["layer"].values[i])
    sel = s.sel(source=source).isel(layer=i)
    return (f"at layer {layer} ({source}) non-sink visual share {_verb(float(sel['nonsink_share_rel_change']), float(sel['nonsink_share_rel_low']), float(sel['nonsink_share_rel_high']))}, "
            f"sink share {_verb(float(sel['sink_share_rel_change']), float(sel['sink_share_rel_low']), float(sel['sink_share_rel_high']))}; "
            f"sink dims before {s.attrs.get('sink_dims_before')}, after {s.attrs.get('sink_dims_after')}")


def reading_keyspace(ks: xr.Dataset) -> str:
    """Mean over layers and kv heads of the Mahalanobis distance and AUC, pooled over langs."""
    m = ks.sel(lang="all").mean(("layer", "kv_head"), skipna=True)
    parts = []
    for st in ks["store"].values:
        x = m.sel(store=st)
        parts.append(f"{st}: Mahalanobis {float(x['mahalanobis']):.2f} (text baseline {float(x['mahalanobis_text']):.2f}), "
                     f"kNN {float(x['knn']):.2f} (baseline {float(x['knn_text']):.2f}), MMD² {float(x['mmd2']):.3f}, "
                     f"AUC {float(x['auc']):.2f} ± {float(x['auc_sd']):.2f} (SD over CV folds)")
    return "visual keys vs text keys (mean over layers): " + "; ".join(parts)


def reading_probes(pr: xr.Dataset) -> str:
    """Best-layer probe accuracy per site and label, before → after, with chance."""
    parts = []
    for site in pr["site"].values:
        for lab in pr["label"].values:
            acc = pr["accuracy"].sel(site=site, label=lab)
            sd = pr["accuracy_sd"].sel(site=site, label=lab)
            ch = float(pr["chance"].sel(site=site, label=lab).max())
            vals = []
            for st in pr["store"].values:
                a = acc.sel(store=st).values
                if not np.isfinite(a).any():
                    vals.append("n/a")
                    continue
                i = int(np.nanargmax(a))
                vals.append(f"{a[i]:.2f} ± {float(sd.sel(store=st).values[i]):.2f} (layer {int(acc['layer'].values[i])})")
            if vals != ["n/a"] * len(vals):
                parts.append(f"{lab}@{site} {vals[0]} → {vals[-1]} (chance {ch:.2f})")
    return "best-layer probe accuracy (± SD over CV folds) " + "; ".join(parts)


def reading_drift(d: xr.Dataset, config: BootstrapConfig) -> str:
    """Mean per-example cosine and CKA with bootstrap CIs, and MMD²."""
    out = []
    for var in ("cosine", "cka"):
        x = d[var].values[:, None]
        if np.isfinite(x).any():
            m, lo, hi = bootstrap_mean_ci(x, config)
            out.append(f"{var} {m[0]:.3f} [{lo[0]:.3f}–{hi[0]:.3f}]")
    return "projector output base vs fine-tuned: " + ", ".join(out) + f", MMD² {float(d['mmd2']):.4f}"


def reading_vocab_drift(v: xr.Dataset) -> str:
    """Script shares of nearest vocabulary neighbours and nearest-embedding cosine, before → after."""
    sh = v["script_share"]
    parts = [f"{sc} {float(sh.sel(store='before', script=sc)) * 100:.1f}% → {float(sh.sel(store='after', script=sc)) * 100:.1f}%"
             for sc in ("hangul", "latin")]
    near = v["nearest_similarity"]
    return (f"nearest vocabulary embeddings of visual tokens (top {v.attrs['k']}, {v.attrs['n_tokens']} tokens): "
            + ", ".join(parts) + f"; cosine to nearest {float(near.sel(store='before')):.3f} → "
            f"{float(near.sel(store='after')):.3f}; nearest id changed for {float(v['top1_changed']) * 100:.1f}% of tokens")


def reading_mir(mir: xr.DataArray) -> str:
    """Overall MIR before → after."""
    return f"overall MIR (log10 Σ layers; lower = better integrated) {mir.attrs['overall_before']:.3f} → {mir.attrs['overall_after']:.3f}"


def reading_cka(m: xr.DataArray) -> str:
    """Same-layer CKA between the stores: lowest layer."""
    common = np.intersect1d(m["layer_a"].values, m["layer_b"].values)
    diag = np.array([float(m.sel(layer_a=l, layer_b=l)) for l in common])
    i = int(np.nanargmin(diag))
    return f"same-layer linear CKA before vs after (last prompt residual): lowest {diag[i]:.3f} at layer {int(common[i])}, mean {np.nanmean(diag):.3f}"


def eval_table(ev: xr.Dataset | None) -> dict[str, dict[str, float]]:
    """Mean of every (example, condition) variable per condition (and per lang): {var[/lang]: {condition: mean}}."""
    if ev is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, var in ev.data_vars.items():
        if "condition" in var.dims and "example" not in var.dims and var.dtype.kind in "biuf":
            rest = [d for d in var.dims if d != "condition"]
            v = var.astype(float).transpose(*rest, "condition") if rest else var.astype(float)
            if not rest:
                out[str(name)] = {str(c): float(x) for c, x in zip(v["condition"].values, v.values)}
                continue
            flat = v.stack(row=rest)
            for i in range(flat.sizes["row"]):
                key = "/".join(f"{d}={flat[d].values[i]}" for d in rest)
                col = flat.isel(row=i)
                if np.isfinite(col.values).any():
                    out[f"{name}/{key}"] = {str(c): float(x) for c, x in zip(col["condition"].values, col.values)}
            continue
        if set(var.dims) != {"example", "condition"} or var.dtype.kind not in "biuf":
            continue
        v = var.astype(float)
        out[str(name)] = {str(c): float(x) for c, x in zip(v["condition"].values, v.mean("example").values)}
        if "lang" in ev.coords:
            langs = to_str(ev["lang"].values)
            for lang in np.unique(langs):
                sub = v.isel(example=np.flatnonzero(langs == lang)).mean("example")
                out[f"{name}/{lang}"] = {str(c): float(x) for c, x in zip(sub["condition"].values, sub.values)}
    return out


def jsonable(obj: Any) -> Any:
    """xarray / numpy / nested containers -> plain JSON values (NaN -> None)."""
    if isinstance(obj, Skipped):
        return {"skipped": str(obj)}
    if isinstance(obj, (xr.Dataset, xr.DataArray)):
        return jsonable(obj.compute().to_dict(data="list"))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
