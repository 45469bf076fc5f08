"""Heads: layer × head visual attention share before, after and their difference; one cell's per-example values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import xarray as xr

from apps.data import example_mask, open_dataset, pair_stamp
from apps.views.context import ViewContext
from probe.vocab import to_str
from probe.analysis.saved import COMPARE, SavedResultsError, load_results


def _share(path: Path, filters: dict, source: str) -> xr.DataArray:
    ds = open_dataset(path)
    return ds["attn_share"].sel(segment="visual", source=source).isel(example=np.flatnonzero(example_mask(ds, filters)))


@st.cache_data(show_spinner=False, max_entries=32)
def head_grid(path: Path, filters: tuple, source: str) -> xr.DataArray:
    """Mean visual share over the filtered examples: [layer, head] (a dask reduction, chunk by chunk)."""
    return _share(path, dict(filters), source).mean("example", skipna=True).compute()


@st.cache_data(show_spinner=False, max_entries=64)
def cell_values(path: Path, filters: tuple, source: str, layer: int, head: int) -> pd.DataFrame:
    """Per-example visual share of one (layer, head), with the example's lang: columns example, lang, share."""
    x = _share(path, dict(filters), source).sel(layer=layer, head=head).compute()
    lang = to_str(x["lang"].values) if "lang" in x.coords else np.full(x.sizes["example"], "all")
    return pd.DataFrame({"example": to_str(x["example"].values), "lang": lang, "share": x.values.astype(float)})


def saved_grids(before: Path, after: Path, source: str) -> dict[str, xr.DataArray] | None:
    """Before, after and after − before grids over all examples from the comparison `probe compare --save` kept in
    AFTER (its visual-share means per layer × head), or None when there is none for this pair as it is now."""
    stamp = pair_stamp(before, after)
    return None if stamp is None else _saved_grids(before, after, source, stamp)


@st.cache_data(show_spinner=False, max_entries=16)
def _saved_grids(before: Path, after: Path, source: str, stamp: str) -> dict[str, xr.DataArray] | None:
    try:  # `stamp` (both stores' fingerprints) keys the cache: a changed store is read again, and refused
        res, _ = load_results(after, COMPARE, {"before": before, "after": after}, {"collapse"})
    except SavedResultsError:
        return None
    c = res.get("collapse", {}).get("layers") if isinstance(res.get("collapse"), dict) else None
    whole = (c is not None and source in c["source"].values and c.attrs.get("paired")
             and c.attrs.get("n_before") == open_dataset(before).sizes["example"] == open_dataset(after).sizes["example"])
    if not whole:  # means over the shared examples only: not the stores' grids
        return None
    c = c.sel(source=source)[["before", "after", "diff"]].load()
    return {"before": c["before"], "after": c["after"], "after − before": c["diff"]}


def sources(path: Path) -> list[str]:
    ds = open_dataset(path)
    return [str(s) for s in ds["source"].values] if "attn_share" in ds else []


def _heatmap(z: xr.DataArray, title: str, diverging: bool) -> go.Figure:
    lim = float(np.nanmax(np.abs(z.values))) if diverging and np.isfinite(z.values).any() else None
    fig = go.Figure(go.Heatmap(
        z=z.values, x=[int(h) for h in z["head"].values], y=[int(layer) for layer in z["layer"].values],
        colorscale="RdBu" if diverging else "Viridis", zmid=0 if diverging else None,
        zmin=-lim if lim else (0 if not diverging else None), zmax=lim if lim else None,
        hovertemplate="layer %{y}, head %{x}: %{z:.4f}<extra></extra>", colorbar=dict(thickness=10)))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=340, margin=dict(t=40, b=10, l=10, r=10))
    return fig


def render(ctx: ViewContext) -> None:
    """Draw the heads grid and the chosen cell's distribution."""
    st.header("Heads: visual share of attention")
    srcs = sources(ctx.before)
    if not srcs:
        st.warning("the store has no `attn_share` (capture with CaptureSpec(attn_share=True))")
        return
    source = st.selectbox("query token (source)", srcs, key="heads_source")
    grids = saved_grids(ctx.before, ctx.after, source) if ctx.after is not None and not ctx.filters else None
    if grids is not None:
        st.caption(f"means over all examples, from the comparison `probe compare --save` kept in {ctx.after.name}")
    else:
        grids = {name: head_grid(p, ctx.filters, source) for name, p in ctx.stores.items()}
    if "after" in grids and "after − before" not in grids:
        b, a = xr.align(grids["before"], grids["after"], join="inner")
        grids["after − before"] = a - b
    cols = st.columns(len(grids))
    layers = [int(x) for x in grids["before"]["layer"].values]
    heads = [int(x) for x in grids["before"]["head"].values]
    for col, (name, z) in zip(cols, grids.items()):
        with col:
            event = st.plotly_chart(_heatmap(z, name, name.startswith("after −")), key=f"heads_grid_{name}",
                                    on_select="rerun", selection_mode="points")
            points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
                getattr(getattr(event, "selection", None), "points", [])
            clicked = (int(points[0]["y"]), int(points[0]["x"])) if points else None
            # a new click chooses the layer and head below; a click already applied must not undo a later manual choice
            if clicked and st.session_state.get(f"heads_clicked_{name}") != clicked:
                st.session_state[f"heads_clicked_{name}"] = clicked
                st.session_state["heads_layer"], st.session_state["heads_head"] = clicked
    c1, c2 = st.columns(2)
    layer = c1.selectbox("layer", layers, key="heads_layer")
    head = c2.selectbox("head", heads, key="heads_head")
    st.subheader(f"Layer {layer}, head {head}: per-example visual share (click a cell above or choose here)")
    frames = []
    for name, p in ctx.stores.items():
        df = cell_values(p, ctx.filters, source, layer, head)
        frames.append(df.assign(store=name))
    per = pd.concat(frames, ignore_index=True)
    fig = go.Figure()
    for name, sub in per.groupby("store", sort=False):
        fig.add_histogram(x=sub["share"], name=name, opacity=0.6, nbinsx=40)
    fig.update_layout(barmode="overlay", xaxis_title="visual share of attention", yaxis_title="examples", height=300,
                      margin=dict(t=10, b=10))
    st.plotly_chart(fig, key="heads_hist")
    summary = per.groupby(["store", "lang"], sort=False)["share"].agg(["mean", "median", "count"]).reset_index()
    st.dataframe(summary, hide_index=True, key="heads_summary")
