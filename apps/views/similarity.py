"""Similarity and probes: same-layer CKA before vs after, and linear-probe accuracy by layer with chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from apps.data import example_mask, open_dataset
from apps.views.context import ViewContext
from probe.analysis.cka import cka_matrix
from probe.analysis.probes import ProbeConfig, compare_probes, label_names, linear_probes


def _subset(path: Path, filters: dict):
    ds = open_dataset(path)
    return ds.isel(example=np.flatnonzero(example_mask(ds, filters)))


@st.cache_data(show_spinner="computing CKA …", max_entries=8)
def cka_by_layer(before: Path, after: Path, filters: tuple, site: str = "last_prompt") -> pd.DataFrame:
    """Same-layer linear CKA between the stores (shared examples) at ``site``: columns layer, cka."""
    m = cka_matrix(_subset(before, dict(filters)), _subset(after, dict(filters)), site=site)
    common = np.intersect1d(m["layer_a"].values, m["layer_b"].values)
    return pd.DataFrame({"layer": common.astype(int), "cka": [float(m.sel(layer_a=l, layer_b=l)) for l in common]})


@st.cache_data(show_spinner="fitting probes …", max_entries=8)
def probe_table(paths: tuple, filters: tuple) -> pd.DataFrame:
    """Probe CV accuracy (± SD over folds) and chance per store, layer, site, label (probe.analysis.probes)."""
    subsets = {name: _subset(p, dict(filters)) for name, p in paths}
    if len(subsets) == 2:
        res = compare_probes(subsets["before"], subsets["after"], ProbeConfig())
    else:
        res = linear_probes(subsets["before"], config=ProbeConfig()).expand_dims(store=["before"])
    return res.to_dataframe().reset_index()


def render(ctx: ViewContext) -> None:
    """Draw CKA and probe accuracy across layers."""
    st.header("Similarity and probes")
    ds = open_dataset(ctx.before)
    if "hook_resid_post" not in ds:
        st.warning("the store has no last-prompt residuals (capture with CaptureSpec(resid=('query',)))")
        return
    if ctx.after is not None:
        st.subheader("Same-layer linear CKA, before vs after (last prompt residual)")
        cka = cka_by_layer(ctx.before, ctx.after, ctx.filters)
        fig = px.line(cka, x="layer", y="cka", markers=True, range_y=[0, 1.05], height=300)
        fig.add_hline(y=1.0, line_dash="dot", annotation_text="1 = unchanged (no-effect value)")
        st.plotly_chart(fig, key="sim_cka")
        st.dataframe(cka, hide_index=True, key="sim_cka_table")
    if not label_names(ds):
        st.caption("no label_* coordinates: no probes")
        return
    st.subheader("Linear probe accuracy by layer (cross-validated by group; dotted = chance)")
    table = probe_table(tuple(ctx.stores.items()), ctx.filters)
    site = st.selectbox("site", sorted(table["site"].unique()), key="sim_site")
    sub = table[table["site"] == site]
    fig = px.line(sub, x="layer", y="accuracy", color="store", line_dash="label", error_y="accuracy_sd", markers=True,
                  range_y=[0, 1.05], height=340)
    for lab, chance in sub.groupby("label")["chance"].max().items():
        fig.add_hline(y=float(chance), line_dash="dot", line_color="grey", annotation_text=f"chance {lab}")
    st.plotly_chart(fig, key="sim_probes")
    st.dataframe(sub, hide_index=True, key="sim_probe_table")
