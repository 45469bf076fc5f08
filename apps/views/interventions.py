"""Interventions: visual dependence against intervention strength, per intervention, from experiment-runner results.

Reads an xarray Dataset with dims (intervention, strength, lang) holding `visual_dependence`, `ci_low`, `ci_high`
(a zarr folder under ROOT, or a store's `runs/<name>` group).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
import xarray as xr

from apps.data import read_group

RESULT_VARS = ("visual_dependence", "ci_low", "ci_high")


def open_results(path: Path, group: str | None = None) -> xr.Dataset:
    """An experiment-runner result dataset: a standalone zarr folder, or group ``group`` of a store."""
    ds = read_group(path, group) if group else xr.open_zarr(path, consolidated=False)
    if ds is None:
        raise KeyError(f"{path} has no group {group!r}")
    missing = [v for v in RESULT_VARS if v not in ds] + [d for d in ("intervention", "strength") if d not in ds.dims]
    if missing:
        raise KeyError(f"{path}{'/' + group if group else ''} is not an intervention result: lacks {missing}")
    return ds


def result_table(ds: xr.Dataset, langs: tuple[str, ...] = ()) -> pd.DataFrame:
    """Long table: intervention, strength, lang, visual_dependence, ci_low, ci_high (rows with no value dropped)."""
    if "lang" not in ds.dims:
        ds = ds.expand_dims(lang=["all"])
    if langs:
        ds = ds.sel(lang=[lg for lg in ds["lang"].values if str(lg) in langs])
    df = ds[list(RESULT_VARS)].load().to_dataframe().reset_index()
    df["intervention"] = df["intervention"].astype(str)
    df["lang"] = df["lang"].astype(str)
    return df[np.isfinite(df["visual_dependence"])][["intervention", "strength", "lang", *RESULT_VARS]]


@st.cache_data(show_spinner=False, max_entries=16)
def _table(path: Path, group: str | None, langs: tuple) -> pd.DataFrame:
    return result_table(open_results(path, group), langs)


def render(path: Path, group: str | None, langs: tuple[str, ...]) -> None:
    """Draw visual dependence against strength, one line per intervention, one panel per language."""
    st.header("Interventions: visual dependence vs strength")
    df = _table(path, group, langs)
    if df.empty:
        st.info("no results for the chosen languages")
        return
    df = df.assign(err_plus=df["ci_high"] - df["visual_dependence"], err_minus=df["visual_dependence"] - df["ci_low"])
    fig = px.line(df, x="strength", y="visual_dependence", color="intervention", facet_col="lang", markers=True,
                  error_y="err_plus", error_y_minus="err_minus", range_y=[0, 1.05], height=380)
    st.plotly_chart(fig, key="iv_fig")
    st.caption("Error bars: the result's ci_low / ci_high. Strength 0 (or the no-op setting) is the unedited model.")
    st.dataframe(df.drop(columns=["err_plus", "err_minus"]), hide_index=True, key="iv_table")
