"""Overview: the report's verdict lines with intervals, and behavioural visual dependence per language."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from apps.data import example_mask, filter_eval, filtered_ids, open_dataset, pair_stamp, read_group
from apps.views.context import ViewContext
from probe.vocab import to_str
from probe.analysis.pipeline import AnalysisConfig, compare_stores
from probe.analysis.saved import SavedResultsError
from probe.analysis.stats import bootstrap_scalar_ci, groups_of
from probe.report.verdict import saved_verdict, verdict


# Computing the verdict runs every analysis of `probe compare` (bootstraps, CV probes, CKA). Unfiltered, the overview
# draws it from the comparison `probe compare --save` saved for the pair; else it computes it on open for stores up
# to this many examples (the organism's), on request above (then cached for every session of the server).
AUTO_VERDICT_MAX_EXAMPLES = 1000


def _filtered(path: Path, filters: dict[str, tuple[str, ...]]):
    """The store's dataset cut to the filtered examples, with its eval group (same examples) attached as attrs["eval"]."""
    ds = open_dataset(path)
    ds = ds.isel(example=np.flatnonzero(example_mask(ds, filters)))
    ev = read_group(path, "eval")
    if ev is not None:
        ds = ds.assign_attrs(eval=filter_eval(ev, to_str(ds["example"].values)).load())  # a new attrs dict: the open dataset is shared
    return ds


@st.cache_data(show_spinner="computing the verdict …", max_entries=16)
def verdict_lines(before: Path, after: Path, filters: tuple) -> list[str]:
    """probe.report's verdict for the filtered before/after pair (same call as `probe compare`)."""
    config = AnalysisConfig()
    res = compare_stores(_filtered(before, dict(filters)), _filtered(after, dict(filters)), config)
    return verdict(res, config.bootstrap)


def saved_lines(before: Path, after: Path) -> tuple[list[str] | None, str]:
    """(verdict lines saved by `probe compare --save` for this pair as it is now, "") or (None, why there are none)."""
    stamp = pair_stamp(before, after)
    if stamp is None:
        return None, "a store cannot be fingerprinted"
    return _saved_cached(before, after, stamp)


@st.cache_data(show_spinner="reading the saved verdict …", max_entries=16)
def _saved_cached(before: Path, after: Path, stamp: str) -> tuple[list[str] | None, str]:
    try:  # `stamp` (both stores' fingerprints) keys the cache: a changed store is read again, and refused
        return saved_verdict(before, after), ""
    except SavedResultsError as err:
        return None, str(err)


def compare_command(before: Path, after: Path) -> str:
    """The command that computes the pair's verdict and saves it where the overview reads it."""
    return f"probe compare {shlex.quote(str(before))} {shlex.quote(str(after))} --out compare.html --save"


def dependence_table(paths: dict[str, Path], filters: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Per store and language: visual dependence (image-dependent questions with a mismatched partner), 95% bootstrap CI
    resampling the store's independent unit (its `group`, e.g. the image, as the report's behaviour lines), n."""
    rows = []
    config = AnalysisConfig().bootstrap
    for name, path in paths.items():
        ev = read_group(path, "eval")
        if ev is None or "visually_dependent" not in ev:
            continue
        ds = open_dataset(path)
        ev = filter_eval(ev, filtered_ids(ds, filters))
        # as the verdict's behaviour lines: each example its own unit when the store records no group
        units = groups_of(ds, ev["example"].values)[0] if "group" in ds.coords else None
        lang = to_str(ev["example_lang"].values)
        keep = ev["example_image_dependent"].values.astype(bool)
        if "has_partner" in ev:
            keep &= ev["has_partner"].values.astype(bool)
        vd = ev["visually_dependent"].values.astype(float)
        for lg in sorted(set(lang.tolist())):
            x = vd[keep & (lang == lg)]
            m, lo, hi = bootstrap_scalar_ci(x, config, None if units is None else units[keep & (lang == lg)])
            rows.append({"store": name, "lang": lg, "visual_dependence": m, "ci_low": lo, "ci_high": hi, "n": int(len(x))})
    return pd.DataFrame(rows, columns=["store", "lang", "visual_dependence", "ci_low", "ci_high", "n"])


def _verdict(ctx: ViewContext) -> None:
    """Saved verdict of the pair (unfiltered), else computed: on open for small stores, on request for large ones."""
    lines, why = saved_lines(ctx.before, ctx.after)
    if lines is not None and not ctx.filters:
        st.caption(f"saved by `probe compare --save` in {ctx.after.name}/compare, over all examples of both stores")
        st.markdown("\n".join(f"- {line}" for line in lines))
        return
    n = max(open_dataset(p).sizes["example"] for p in ctx.stores.values())
    asked = st.session_state.get("verdict_asked") == (ctx.before, ctx.after, ctx.filters)
    if n <= AUTO_VERDICT_MAX_EXAMPLES or asked:
        st.markdown("\n".join(f"- {line}" for line in verdict_lines(ctx.before, ctx.after, ctx.filters)))
        return
    if ctx.filters:
        st.markdown(f"The verdict for the examples the filters keep is computed here on request (up to {n} examples: "
                    "minutes)" + ("; without filters, the saved verdict over all examples is shown." if lines else "."))
    else:
        st.markdown(f"No saved verdict for this pair ({why}); compute it with `{compare_command(ctx.before, ctx.after)}`")
    if st.button(f"compute it here ({n} examples: minutes)", key="verdict_button"):
        st.session_state["verdict_asked"] = (ctx.before, ctx.after, ctx.filters)
        st.rerun()


@st.cache_data(show_spinner=False, max_entries=16)
def _dependence_cached(paths: tuple, filters: tuple) -> pd.DataFrame:
    return dependence_table(dict(paths), dict(filters))


def render(ctx: ViewContext) -> None:
    """Draw the overview."""
    st.header("Overview")
    if ctx.after is None:
        st.info("Choose an *after* store in the sidebar to see the before → after verdict.")
    else:
        st.subheader("Verdict (probe.report, 95% bootstrap intervals)")
        _verdict(ctx)
    st.subheader("Behavioural visual dependence per language")
    table = _dependence_cached(tuple(ctx.stores.items()), ctx.filters)
    if table.empty:
        st.caption("no `eval` group in the chosen store(s): run `probe eval MODEL MANIFEST --out STORE`")
        return
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, sub in table.groupby("store", sort=False):
        fig.add_bar(name=name, x=sub["lang"], y=sub["visual_dependence"],
                    error_y=dict(type="data", symmetric=False, array=sub["ci_high"] - sub["visual_dependence"],
                                 arrayminus=sub["visual_dependence"] - sub["ci_low"]))
    fig.update_layout(barmode="group", yaxis=dict(title="visual dependence", range=[0, 1]), height=320,
                      margin=dict(t=20, b=20))
    st.plotly_chart(fig, key="overview_dependence")
    st.dataframe(table, hide_index=True, key="overview_table")
