"""Interventions: visual dependence per condition of an experiment run, exactly as `interventions run` writes it.

Reads a run folder (RUN, or RUN/results.zarr) or a store's `runs/<name>` group through probe.results.read_run, and
tabulates it with probe.results.run_summary (the cluster bootstrap over the independent unit that the CLI prints).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
import xarray as xr

from probe.results import read_run, run_summary

RESULT_VARS = ("visual_dependence", "ci_low", "ci_high")


def open_results(path: Path, group: str | None = None) -> xr.Dataset:
    """An experiment-runner result: a run folder or its results.zarr, or group ``group`` of a store (one-line error)."""
    return read_run(path, group=group or None)


def result_table(ds: xr.Dataset, langs: tuple[str, ...] = ()) -> pd.DataFrame:
    """Long table: condition, intervention, lang, visual_dependence, ci_low, ci_high, n (conditions with a value)."""
    summary = run_summary(ds, by="lang")
    rows = []
    for c, condition in enumerate(summary["condition"].values.tolist()):
        for j, lang in enumerate(summary["lang"].values.tolist()):
            if langs and lang not in langs:
                continue
            rows.append({"condition": condition, "intervention": str(summary["intervention"].values[c]), "lang": lang,
                         "visual_dependence": float(summary["visual_dependence"].values[c, j]),
                         "ci_low": float(summary["visual_dependence_low"].values[c, j]),
                         "ci_high": float(summary["visual_dependence_high"].values[c, j]),
                         "n": int(summary["n_visual_dependence"].values[c, j])})
    df = pd.DataFrame(rows, columns=["condition", "intervention", "lang", *RESULT_VARS, "n"])
    return df[np.isfinite(df["visual_dependence"])].reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=16)
def _table(path: Path, group: str | None, langs: tuple) -> pd.DataFrame:
    return result_table(open_results(path, group), langs)


def render(path: Path, group: str | None, langs: tuple[str, ...]) -> None:
    """Visual dependence per condition with its interval, one colour per intervention, one panel per language."""
    st.header("Interventions: visual dependence per condition")
    df = _table(path, group, langs)
    if df.empty:
        st.info("no results for the chosen languages")
        return
    df = df.assign(err_plus=df["ci_high"] - df["visual_dependence"], err_minus=df["visual_dependence"] - df["ci_low"])
    fig = px.scatter(df, x="condition", y="visual_dependence", color="intervention", facet_col="lang",
                     error_y="err_plus", error_y_minus="err_minus", range_y=[0, 1.05], height=420)
    st.plotly_chart(fig, key="iv_fig")
    st.caption("Visual dependence: share of image-dependent questions answered correctly with the real image that "
               "follow another example's image to its answer. Error bars: 95% cluster-bootstrap interval over "
               "independent units (example group, else image). `none` is the unedited model.")
    st.dataframe(df.drop(columns=["err_plus", "err_minus"]), hide_index=True, key="iv_table")
