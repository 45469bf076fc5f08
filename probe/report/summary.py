"""One-line readings with numbers and intervals, and JSON-able views of analysis results."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import xarray as xr

from probe.vocab import to_str
from probe.analysis.pipeline import Skipped
from probe.report.verdict import drift_lines, sinks_lines


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


def reading_collapse(res: dict[str, Any], config: Any) -> str:
    """e.g. 'visual share from last_prompt at layers 2–3 fell 31% [24–38%] (0.50 → 0.35; ...)' per source."""
    c = res["layers"]
    ci = c.attrs.get("ci", 0.95)
    parts = []
    for source, band in res["band"].items():
        how = ("layers chosen where the simultaneous band over layers excludes 0; interval valid after that choice"
               if band.get("selected") else "no layer changed beyond the simultaneous band: all layers")
        parts.append(f"visual share from {source} at {_band(band['layers'])} {_verb(band['rel_change'], band['rel_low'], band['rel_high'])} "
                     f"({band['before']:.3f} → {band['after']:.3f}; {ci * 100:.0f}% cluster-bootstrap CI, {how})")
    return " · ".join(parts) + f". Resampled: {c.attrs.get('resampled', 'examples')}, {c.attrs.get('n_units', '?')} units."


def reading_sinks(s: xr.Dataset, config: Any = None) -> str:
    """Largest change of non-sink visual share (simultaneous band over layers), with the sink share beside it."""
    source = str(s["source"].values[0])
    rel = s["nonsink_share_rel_change"].sel(source=source).values
    if not s.attrs.get("sink_dims"):
        return sinks_lines(s)[0]
    if not np.isfinite(rel).any():
        return "no visual attention sink statistics (no visual attention)"
    i = int(np.nanargmax(np.abs(rel)))
    layer = int(s["layer"].values[i])
    sel = s.sel(source=source).isel(layer=i)
    return (f"at layer {layer} ({source}), the layer of largest change, non-sink visual share "
            f"{_verb(float(sel['nonsink_share_rel_change']), float(sel['nonsink_share_rel_sim_low']), float(sel['nonsink_share_rel_sim_high']))}, "
            f"sink share {_verb(float(sel['sink_share_rel_change']), float(sel['sink_share_rel_sim_low']), float(sel['sink_share_rel_sim_high']))} "
            f"(simultaneous bands over layers {s.attrs.get('first_layer', 2)}+); sink dims {s.attrs.get('sink_dims')} detected on the "
            f"base store and used for both; dense outlier dims left out: {s.attrs.get('dense_dims') or 'none'}")


def reading_keyspace(ks: xr.Dataset, config: Any = None) -> str:
    """Mean over layers and kv heads of the Mahalanobis distance and AUC, pooled over langs."""
    m = ks.sel(lang="all").mean(("layer", "kv_head"), skipna=True)
    parts = []
    for st in ks["store"].values:
        x = m.sel(store=st)
        parts.append(f"{st}: Mahalanobis {float(x['mahalanobis']):.2f} (text baseline {float(x['mahalanobis_text']):.2f}), "
                     f"kNN {float(x['knn']):.2f} (baseline {float(x['knn_text']):.2f}), MMD² {float(x['mmd2']):.3f} (no difference: 0), "
                     f"AUC {float(x['auc']):.2f} ± {float(x['auc_sd']):.2f} (SD over CV folds; no difference: 0.5)")
    return "visual keys vs text keys (mean over layers): " + "; ".join(parts)


def reading_probes(pr: xr.Dataset, config: Any = None) -> str:
    """Best-layer probe accuracy per site and label (exploratory), with its shuffled-label control."""
    parts = []
    stores = list(pr["store"].values) if "store" in pr.dims else [None]
    for site in pr["site"].values:
        for lab in pr["label"].values:
            vals = []
            for st in stores:
                sub = pr if st is None else pr.sel(store=st)
                a = sub["accuracy"].sel(site=site, label=lab).values
                if not np.isfinite(a).any():
                    vals.append("n/a")
                    continue
                i = int(np.nanargmax(a))
                ctl = float(sub["control_accuracy"].sel(site=site, label=lab).values[i])
                sd = float(sub["accuracy_sd"].sel(site=site, label=lab).values[i])
                vals.append(f"{a[i]:.2f} ± {sd:.2f} (layer {int(pr['layer'].values[i])}; shuffled-label control {ctl:.2f})")
            ch = float(pr["chance"].sel(site=site, label=lab).max())
            if vals != ["n/a"] * len(vals):
                parts.append(f"{lab}@{site} {' → '.join(vals)} (chance {ch:.2f})")
    return ("best-layer probe accuracy (exploratory: the best of each store's layers, chosen on the same folds; ± SD over "
            f"{pr.attrs.get('cv_split_by', 'example')}-grouped CV folds) " + "; ".join(parts))


def reading_drift(d: xr.Dataset, config: Any) -> str:
    """Mean per-example cosine and unbiased CKA with cluster-bootstrap CIs and their no-relation values, and MMD²."""
    return drift_lines(d, config)[0].replace("projector drift (H3): ", "projector output base vs fine-tuned: ")


def reading_vocab_drift(v: xr.Dataset, config: Any = None) -> str:
    """Script shares of nearest vocabulary neighbours and nearest-embedding cosine, before → after."""
    sh = v["script_share"]
    parts = [f"{sc} {float(sh.sel(store='before', script=sc)) * 100:.1f}% → {float(sh.sel(store='after', script=sc)) * 100:.1f}%"
             for sc in ("hangul", "latin")]
    near = v["nearest_similarity"]
    return (f"nearest vocabulary embeddings of visual tokens (top {v.attrs['k']}, {v.attrs['n_tokens']} tokens): "
            + ", ".join(parts) + f"; cosine to nearest {float(near.sel(store='before')):.3f} → "
            f"{float(near.sel(store='after')):.3f}; nearest id changed for {float(v['top1_changed']) * 100:.1f}% of tokens")


def reading_mir(mir: xr.DataArray, config: Any = None) -> str:
    """Overall MIR (before → after for a pair)."""
    how = "log10 Σ layers; lower = better integrated; text tokens after the image, last layer before the final norm"
    if "store" in mir.dims:
        return f"overall MIR ({how}) {mir.attrs['overall_before']:.3f} → {mir.attrs['overall_after']:.3f}"
    return f"overall MIR ({how}) {mir.attrs['overall']:.3f}"


def reading_cka(m: xr.DataArray, config: Any = None) -> str:
    """Same-layer unbiased CKA (pair: between the stores; single store: layer × layer)."""
    common = np.intersect1d(m["layer_a"].values, m["layer_b"].values)
    diag = np.array([float(m.sel(layer_a=l, layer_b=l)) for l in common])
    i = int(np.nanargmin(diag))
    return (f"same-layer unbiased linear CKA (last prompt residual; no relation: ~0, identical: 1): lowest {diag[i]:.3f} "
            f"at layer {int(common[i])}, mean {np.nanmean(diag):.3f}")


def reading_projector_vision_cka(pv: Any, config: Any = None) -> str:
    """Unbiased CKA of example-pooled projector output vs vision tower output, with the shuffled-example null."""
    def one(r: dict[str, float]) -> str:
        return f"{r['cka']:.3f} (shuffled-example null {r['null_mean']:.3f}, 95th pct {r['null_p95']:.3f}; biased form {r['cka_biased']:.3f})"

    if "before" in pv:
        return f"unbiased linear CKA of example-pooled projector output vs vision tower output {one(pv['before'])} → {one(pv['after'])}"
    return f"unbiased linear CKA of example-pooled projector output vs vision tower output {one(pv)}"


def eval_table(ev: xr.Dataset | None) -> dict[str, dict[str, float]]:
    """Mean of every (example, condition) variable per condition (and per language): {var[/lang]: {condition: mean}}.

    Aggregate variables (condition × other dims, no example) get one row per value of the other
    dims. Per-example languages come from `example_lang` (or a `lang` coordinate on the example dim);
    the aggregate `lang` dimension is never read as per-example.
    """
    if ev is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    langs = None
    if "example" in ev.dims:
        for cand in ("example_lang", "lang"):
            if cand in ev.coords and ev[cand].dims == ("example",):
                langs = to_str(ev[cand].values)
                break
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
        if langs is not None:
            for lang in np.unique(langs):
                sub = v.isel(example=np.flatnonzero(langs == lang)).mean("example")
                out[f"{name}/{lang}"] = {str(c): float(x) for c, x in zip(sub["condition"].values, sub.values)}
    return out


def html_table(rows: dict[str, dict[str, float]], label: str) -> str:
    """An HTML table of {row: {column: value}} under a heading."""
    if not rows:
        return ""
    cols = sorted({c for r in rows.values() for c in r})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{r.get(c, float('nan')):.3f}</td>" for c in cols) + "</tr>"
        for k, r in rows.items()
    )
    return f"<h3>{html.escape(label)}</h3><table><tr><th></th>{head}</tr>{body}</table>"


_BEHAVIOUR = (("real", "real"), ("blank", "blank"), ("mismatched", "mismatched"), ("visual_dependence", "visual dependence"))


def _behaviour_rows(ev: xr.Dataset) -> dict[tuple[str, str, str], dict] | None:
    """The evaluation's table rows keyed by (lang, question type, kind), or None when it is not a dependence evaluation."""
    from probe.eval.dependence import dependence_rows

    if not {"accuracy", "n", "visual_dependence"} <= set(ev.data_vars) or "kind" not in ev.dims:
        return None
    return {(r["lang"], r["question"], r["kind"]): r for r in dependence_rows(ev.load())}


def _share(r: dict, key: str) -> str:
    v = r.get(key)
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v * 100:.1f}% <small>[{r[key + '_low'] * 100:.0f}–{r[key + '_high'] * 100:.0f}]</small>"


def behaviour_table(rows: dict[tuple[str, str, str], dict], label: str) -> str:
    """One store's behaviour: rows language × question type × kind, columns real / blank / mismatched / visual
    dependence, each a share with its cluster-bootstrap interval."""
    head = "<tr><th>lang</th><th>question</th><th>kind</th><th>n</th>" + "".join(f"<th>{h}</th>" for _, h in _BEHAVIOUR) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(k[0])}</td><td>{html.escape(k[1])}</td><td>{html.escape(k[2])}</td><td>{r['n']}</td>"
                   + "".join(f"<td>{_share(r, c)}</td>" for c, _ in _BEHAVIOUR) + "</tr>" for k, r in rows.items())
    return f"<div><h3>{html.escape(label)}</h3><table>{head}{body}</table></div>"


def change_table(before: dict, after: dict) -> str:
    """after − before of each share, in percentage points, for the rows both stores have (bold: the two stores'
    intervals do not overlap)."""
    head = "<tr><th>lang</th><th>question</th><th>kind</th>" + "".join(f"<th>Δ {h}</th>" for _, h in _BEHAVIOUR) + "</tr>"
    body = ""
    for k in (k for k in before if k in after):
        cells = []
        for c, _ in _BEHAVIOUR:
            b, a = before[k].get(c), after[k].get(c)
            if b is None or a is None or not (np.isfinite(b) and np.isfinite(a)):
                cells.append("<td>–</td>")
                continue
            apart = before[k][c + "_high"] < after[k][c + "_low"] or after[k][c + "_high"] < before[k][c + "_low"]
            text = f"{(a - b) * 100:+.1f}"
            cells.append(f"<td>{'<b>' + text + '</b>' if apart else text}</td>")
        body += f"<tr><td>{html.escape(k[0])}</td><td>{html.escape(k[1])}</td><td>{html.escape(k[2])}</td>{''.join(cells)}</tr>"
    return f"<div><h3>change (after − before, points)</h3><table>{head}{body}</table></div>"


def eval_tables(ev: Any) -> list[str]:
    """The eval section's HTML: one behaviour table per store (language × question type × kind; real / blank /
    mismatched / visual dependence with intervals) and, for a pair, the before→after change beside them."""
    stores = {"store": ev} if isinstance(ev, xr.Dataset) else {k: v for k, v in ev.items() if v is not None}
    rows = {k: _behaviour_rows(v) for k, v in stores.items()}
    if any(r is None for r in rows.values()):  # not a dependence evaluation: its means per condition
        return [html_table(eval_table(v), k) for k, v in stores.items()]
    parts = [behaviour_table(r, k) for k, r in rows.items()]
    if set(rows) == {"before", "after"}:
        parts.append(change_table(rows["before"], rows["after"]))
    note = ("<p>Shares of correct answers with the real image, a blank image and another example's image "
            "(mismatched); visual dependence: the share of image-dependent questions answered right with the real image "
            "and with the other image's answer when shown another example's image. [low–high]: 95% cluster-bootstrap intervals over independent units. "
            "Δ in bold: the two stores' intervals do not overlap.</p>")
    # side by side while the page is wide enough, each table below the previous one otherwise (never overlapping)
    return [note + "<div style='display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start;white-space:nowrap'>"
            + "".join(parts) + "</div>"]


def mean_over_heads_table(r: xr.Dataset) -> list[str]:
    """A single-store result averaged over every dim but layer, as an HTML table."""
    return [r.mean([d for d in r.dims if d != "layer"]).to_dataframe().round(4).to_html()]


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
