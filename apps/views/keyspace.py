"""Key space: a 2-D PCA of post-RoPE keys by segment and language, before and after on the same axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from apps.data import example_mask, open_dataset
from apps.views.context import ViewContext
from probe.vocab import to_str
from probe.segments import Segment


def key_rows(path: Path, filters: dict, layer: int, kv_head: int, max_examples: int, seed: int = 0) -> pd.DataFrame:
    """Keys of a seeded sample of at most ``max_examples`` filtered examples, one row per non-pad position.

    Columns: example, lang, segment, position, k0..k{d-1}. Reads only the sampled examples.
    """
    ds = open_dataset(path)
    idx = np.flatnonzero(example_mask(ds, filters))
    if len(idx) > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_examples, replace=False))
    keys = ds["hook_rot_k"].sel(layer=layer).isel(kv_head=kv_head, example=idx).transpose("example", "position", "d_head").values
    seg = ds["segment_ids"].isel(example=idx).values
    lang = to_str(ds["lang"].values)[idx] if "lang" in ds.coords else np.full(len(idx), "all")
    ex, pos = np.nonzero((seg > 0) & np.isfinite(keys).all(-1))
    frame = pd.DataFrame(keys[ex, pos].astype(np.float64), columns=[f"k{j}" for j in range(keys.shape[-1])])
    frame.insert(0, "position", pos)
    frame.insert(0, "segment", [Segment(int(s)).label for s in seg[ex, pos]])
    frame.insert(0, "lang", lang[ex])
    frame.insert(0, "example", to_str(ds["example"].values)[idx][ex])
    return frame


def pca_2d(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Project every store's keys on the top-2 principal axes of the pooled keys (shared axes): adds pc1, pc2, store."""
    cols = [c for c in next(iter(frames.values())).columns if c.startswith("k") and c[1:].isdigit()]
    pooled = np.concatenate([f[cols].to_numpy() for f in frames.values()])
    mean = pooled.mean(0)
    _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
    out = []
    for name, f in frames.items():
        z = (f[cols].to_numpy() - mean) @ vt[:2].T
        out.append(f.drop(columns=cols).assign(pc1=z[:, 0], pc2=z[:, 1], store=name))
    return pd.concat(out, ignore_index=True)


@st.cache_data(show_spinner="reading keys …", max_entries=16)
def _projection(paths: tuple, filters: tuple, layer: int, kv_head: int, max_examples: int) -> pd.DataFrame:
    return pca_2d({name: key_rows(p, dict(filters), layer, kv_head, max_examples) for name, p in paths})


def render(ctx: ViewContext) -> None:
    """Draw the key-space view."""
    st.header("Key space: visual vs text keys")
    ds = open_dataset(ctx.before)
    if "hook_rot_k" not in ds:
        st.warning("the store has no keys (capture with CaptureSpec(keys=True))")
        return
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("layer", [int(x) for x in ds["layer"].values], key="ks_layer")
    kv_head = c2.selectbox("kv head", list(range(ds.sizes["kv_head"])), key="ks_head")
    n = c3.number_input("examples sampled per store", 10, 2000, 200, step=50, key="ks_n")
    proj = _projection(tuple(ctx.stores.items()), ctx.filters, layer, kv_head, int(n))
    st.caption("PCA fitted on the pooled keys of both stores, so before and after share axes. "
               "Colour = segment, symbol = language.")
    fig = px.scatter(proj, x="pc1", y="pc2", color="segment", symbol="lang", facet_col="store", opacity=0.6,
                     hover_data=["example", "position"], height=420)
    fig.update_traces(marker=dict(size=4))
    st.plotly_chart(fig, key="ks_fig")
    centroids = proj.groupby(["store", "segment", "lang"])[["pc1", "pc2"]].mean().reset_index()
    st.dataframe(centroids, hide_index=True, key="ks_centroids")
