"""Plotly figures, one per analysis result."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

_COL = {"before": "#1f77b4", "after": "#d62728"}


def _fill(x: np.ndarray) -> list:
    """NaN -> None so plotly leaves gaps."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, dtype=float)]


def collapse_heatmap(collapse: xr.Dataset, source: str = "last_prompt") -> go.Figure:
    """Relative change of visual share per layer × head for one source."""
    z = collapse["rel_change"].sel(source=source).transpose("layer", "head").values * 100
    fig = go.Figure(go.Heatmap(
        z=[_fill(r) for r in z], x=[str(h) for h in collapse["head"].values], y=[str(l) for l in collapse["layer"].values],
        colorscale="RdBu", zmid=0, colorbar={"title": "% change"},
    ))
    fig.update_layout(title=f"Visual attention share, relative change after vs before ({source})", xaxis_title="head", yaxis_title="layer")
    return fig


def collapse_layers(collapse: xr.Dataset) -> go.Figure:
    """Head-mean visual share per layer, before and after, with the relative change and its CI."""
    sources = [str(s) for s in collapse["source"].values]
    fig = make_subplots(rows=1, cols=len(sources), subplot_titles=sources, shared_yaxes=True)
    layers = collapse["layer"].values
    for i, src in enumerate(sources, start=1):
        for name in ("before", "after"):
            fig.add_trace(go.Scatter(
                x=layers, y=_fill(collapse[f"layer_{name}"].sel(source=src).values), name=name, mode="lines+markers",
                line={"color": _COL[name]}, showlegend=i == 1,
                error_y=None if name == "before" else {
                    "type": "data", "symmetric": False,
                    "array": _fill(collapse["layer_diff_sim_high"].sel(source=src).values - collapse["layer_diff"].sel(source=src).values),
                    "arrayminus": _fill(collapse["layer_diff"].sel(source=src).values - collapse["layer_diff_sim_low"].sel(source=src).values),
                },
            ), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_yaxes(title_text="visual share", row=1, col=1)
    fig.update_layout(title="Visual attention share per layer (mean over heads; bars: simultaneous CI of the change over layers)")
    return fig


def sink_bars(sinks: xr.Dataset, source: str = "last_prompt") -> go.Figure:
    """Sink vs non-sink visual share per layer, before and after."""
    fig = go.Figure()
    layers = [str(l) for l in sinks["layer"].values]
    for var, pattern in (("sink_share", "/"), ("nonsink_share", "")):
        for name in ("before", "after"):
            fig.add_trace(go.Bar(
                x=layers, y=_fill(sinks[f"{var}_{name}"].sel(source=source).values), name=f"{var.split('_')[0]} {name}",
                marker={"color": _COL[name], "pattern": {"shape": pattern}},
            ))
    fig.update_layout(barmode="group", title=f"Attention on sink vs non-sink visual tokens ({source})", xaxis_title="layer", yaxis_title="share")
    return fig


def keyspace_lines(ks: xr.Dataset) -> go.Figure:
    """OOD scores of visual keys per layer (mean over kv heads), per lang, before and after."""
    scores = [("mahalanobis", "Mahalanobis (visual)"), ("knn", "kNN distance (visual)"), ("mmd2", "RBF-MMD²"), ("auc", "linear AUC")]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[t for _, t in scores])
    dash = {lang: d for lang, d in zip(ks["lang"].values, ["solid", "dot", "dash", "dashdot", "longdash"])}
    stores = list(ks["store"].values) if "store" in ks.dims else [None]
    for i, (var, _) in enumerate(scores, start=1):
        for st in stores:
            sub = ks if st is None else ks.sel(store=st)
            for lang in ks["lang"].values:
                y = sub[var].sel(lang=lang).mean("kv_head", skipna=True).values
                fig.add_trace(go.Scatter(
                    x=ks["layer"].values, y=_fill(y), mode="lines+markers", name=f"{st or ''} {lang}".strip(),
                    line={"color": _COL.get(str(st), "#444"), "dash": dash[lang]}, showlegend=i == 1,
                ), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_layout(title="Key-space OOD of visual keys vs text keys")
    return fig


def probe_lines(pr: xr.Dataset) -> go.Figure:
    """Probe accuracy per layer, per site and label, before and after, with chance."""
    sites = [str(s) for s in pr["site"].values]
    fig = make_subplots(rows=1, cols=len(sites), subplot_titles=sites, shared_yaxes=True)
    stores = list(pr["store"].values) if "store" in pr.dims else [None]
    for i, site in enumerate(sites, start=1):
        for lab in pr["label"].values:
            for st in stores:
                sub = pr if st is None else pr.sel(store=st)
                fig.add_trace(go.Scatter(
                    x=pr["layer"].values, y=_fill(sub["accuracy"].sel(site=site, label=lab).values), mode="lines+markers",
                    name=f"{lab} {st or ''}".strip(), line={"color": _COL.get(str(st), "#444")}, showlegend=i == 1,
                ), row=1, col=i)
            chance = (pr if stores == [None] else pr.sel(store=stores[0]))["chance"].sel(site=site, label=lab).values
            fig.add_trace(go.Scatter(x=pr["layer"].values, y=_fill(chance), mode="lines", name=f"{lab} chance",
                                     line={"color": "#999", "dash": "dot"}, showlegend=i == 1), row=1, col=i)
        fig.update_xaxes(title_text="layer", row=1, col=i)
    fig.update_yaxes(title_text="CV accuracy", row=1, col=1)
    fig.update_layout(title="Linear probes: is the label decodable?")
    return fig


def cka_heatmap(m: xr.DataArray, title: str = "Linear CKA") -> go.Figure:
    """Layer × layer CKA matrix (unbiased CKA can dip below 0, its no-relation value)."""
    low = min(0.0, float(np.nanmin(m.values))) if np.isfinite(m.values).any() else 0.0
    fig = go.Figure(go.Heatmap(z=[_fill(r) for r in m.values], x=[str(x) for x in m["layer_b"].values],
                               y=[str(y) for y in m["layer_a"].values], zmin=low, zmax=1, colorscale="Viridis"))
    fig.update_layout(title=title, xaxis_title="layer (b)", yaxis_title="layer (a)")
    return fig


def drift_hist(drift: xr.Dataset) -> go.Figure:
    """Per-example cosine and CKA between base and fine-tuned projector outputs."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["cosine (no relation: 0)", "unbiased linear CKA (no relation: ~0)"])
    fig.add_trace(go.Histogram(x=_fill(drift["cosine"].values), name="cosine"), row=1, col=1)
    fig.add_trace(go.Histogram(x=_fill(drift["cka"].values), name="CKA"), row=1, col=2)
    fig.update_layout(title="Projector drift per example", showlegend=False)
    return fig


def vocab_script_bars(v: xr.Dataset) -> go.Figure:
    """Share of visual tokens' nearest vocabulary neighbours by script, before vs after."""
    fig = go.Figure()
    for st in v["store"].values:
        fig.add_trace(go.Bar(x=list(v["script"].values), y=v["script_share"].sel(store=st).values, name=str(st),
                             marker_color=_COL.get(str(st), "#444")))
    fig.update_layout(title="Nearest vocabulary neighbours of visual tokens, by script", barmode="group",
                      yaxis_title="share of neighbours", yaxis_range=[0, 1])
    return fig


def mir_lines(mir: xr.DataArray) -> go.Figure:
    """Per-layer modality integration rate (lower = better integrated)."""
    fig = go.Figure()
    stores = list(mir["store"].values) if "store" in mir.dims else [None]
    for st in stores:
        y = mir if st is None else mir.sel(store=st)
        fig.add_trace(go.Scatter(x=mir["layer"].values, y=_fill(y.values), mode="lines+markers", name=str(st or "MIR"),
                                 line={"color": _COL.get(str(st), "#444")}))
    fig.update_layout(title="Modality integration rate per layer", xaxis_title="layer", yaxis_title="MIR (Fréchet distance)",
                      xaxis_dtick=1)
    return fig


def visual_share_heatmap(vs: xr.Dataset, source: str = "last_prompt") -> go.Figure:
    """Mean visual share per layer × head (single store)."""
    z = vs["mean"].sel(source=source).transpose("layer", "head").values
    fig = go.Figure(go.Heatmap(z=[_fill(r) for r in z], x=[str(h) for h in vs["head"].values],
                               y=[str(l) for l in vs["layer"].values], colorscale="Viridis"))
    fig.update_layout(title=f"Visual attention share ({source})", xaxis_title="head", yaxis_title="layer")
    return fig


# Registry views: each takes one analysis result and returns the figures (or HTML) of its section.

def visual_share_figures(vs: xr.Dataset) -> list:
    return [visual_share_heatmap(vs, str(vs["source"].values[0]))]


def collapse_figures(res: dict) -> list:
    import html as _html

    c, top = res["layers"], res["top_heads"]
    src = str(top.attrs.get("source", c["source"].values[0]))
    note = (f"<h3>Heads that changed most (exploratory: the top {top.sizes['rank']} of {top.attrs.get('n_candidates', '?')} "
            "heads, selected on the same data as their pointwise intervals)</h3>")
    return [collapse_layers(c), collapse_heatmap(c, src), note + top.to_dataframe().reset_index().round(4).to_html(index=False)
            .replace("<table", f"<table title='{_html.escape(src)}'", 1)]


def sink_figures(s: xr.Dataset) -> list:
    return [sink_bars(s, str(s["source"].values[0]))]


def keyspace_figures(ks: xr.Dataset) -> list:
    return [keyspace_lines(ks)]


def probe_figures(pr: xr.Dataset) -> list:
    return [probe_lines(pr)]


def drift_figures(d: xr.Dataset) -> list:
    return [drift_hist(d)]


def vocab_figures(v: xr.Dataset) -> list:
    return [vocab_script_bars(v)]


def mir_figures(m: xr.DataArray) -> list:
    return [mir_lines(m)]


def cka_figures(m: xr.DataArray) -> list:
    return [cka_heatmap(m, "Unbiased linear CKA (no relation: ~0; identical up to rotation/scale: 1)")]
