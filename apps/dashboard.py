"""The Streamlit dashboard over the TraceStores under ROOT: `streamlit run apps/dashboard.py -- --root ROOT`.

ROOT comes from `--root` after `--`, else the VISBLIND_DASHBOARD_ROOT environment variable. Preselect with
query parameters `?before=REL&after=REL&view=example` (paths relative to ROOT).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from apps.data import default_pair, filter_options, open_dataset, store_groups
from apps.paths import PathRefused, discover, resolve_under_root
from apps.views import example, heads, interventions, keyspace, overview, similarity
from apps.views.context import ViewContext
from probe.store import StoreError, TraceStore

ROOT_ENV = "VISBLIND_DASHBOARD_ROOT"
VIEWS = ("overview", "heads", "example", "key space", "similarity & probes", "interventions")
NONE = "(none)"


def _root() -> Path:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root")
    args, _ = parser.parse_known_args(sys.argv[1:])
    root = args.root or os.environ.get(ROOT_ENV)
    if not root or not Path(root).is_dir():
        st.error(f"no ROOT folder: start with `probe dashboard ROOT` (got {root!r})")
        st.stop()
    return Path(root).resolve()


@st.cache_data(ttl=30, show_spinner=False)
def _discover(root: Path) -> dict[str, list[str]]:
    return discover(root)


@st.cache_data(ttl=30, show_spinner=False)
def _default_pair(root: Path, stores: tuple[str, ...]) -> tuple[str | None, str | None]:
    return default_pair(root, list(stores))


def _checked_store(root: Path, rel: str) -> Path:
    """ROOT-checked real path of a store; stops the page with a one-line message if refused or not a store."""
    try:
        path = resolve_under_root(root, rel)
    except PathRefused as err:
        st.error(str(err))
        st.stop()
    if not TraceStore.exists(path):
        st.error(f"refused: {rel!r} is not a TraceStore under ROOT")
        st.stop()
    return path


def _pick(label: str, options: list[str], param: str, optional: bool, default: str | None = None) -> str | None:
    """A sidebar store choice, preset from the query parameter ``param`` (added to the options if not discovered),
    else `default` (apps.data.default_pair), else the first option ((none) when optional)."""
    wanted = st.query_params.get(param) or default
    opts = ([NONE] if optional else []) + options + ([wanted] if wanted and wanted not in options else [])
    index = opts.index(wanted) if wanted in opts else 0
    choice = st.sidebar.selectbox(label, opts, index=index, key=f"pick_{param}")
    return None if choice == NONE else choice


def _filters(ds) -> tuple[tuple[str, tuple[str, ...]], ...]:
    st.sidebar.markdown("**Filters** (empty = all)")
    out = []
    for coord, values in filter_options(ds).items():
        box = st.sidebar if not coord.startswith("label_") else st.sidebar.expander(coord, expanded=False)
        chosen = box.multiselect(coord, values, key=f"filter_{coord}")
        if chosen:
            out.append((coord, tuple(sorted(chosen))))
    return tuple(out)


def main() -> None:
    """Lay out the sidebar (stores, view, filters) and draw the chosen view."""
    st.set_page_config(page_title="visblind dashboard", layout="wide")
    root = _root()
    found = _discover(root)
    st.sidebar.title("visblind")
    st.sidebar.caption(f"ROOT: {root}")
    view = st.sidebar.radio("view", VIEWS, index=VIEWS.index(st.query_params.get("view", "overview"))
                            if st.query_params.get("view") in VIEWS else 0, key="view")
    if view == "interventions":
        _interventions(root, found)
        return
    if not found["stores"] and not st.query_params.get("before"):
        st.info(f"no TraceStore under ROOT {root}")
        return
    pair = _default_pair(root, tuple(found["stores"]))
    before_rel = _pick("before (base) store", found["stores"], "before", optional=False, default=pair[0])
    after_rel = _pick("after (fine-tuned) store", [s for s in found["stores"] if s != before_rel], "after", optional=True,
                      default=pair[1] if pair[0] == before_rel else None)
    before = _checked_store(root, before_rel)
    after = _checked_store(root, after_rel) if after_rel else None
    try:
        ds = open_dataset(before)
    except StoreError as err:
        st.error(str(err).splitlines()[0])
        st.stop()
    ctx = ViewContext(root, before, after, _filters(ds))
    if view == "overview":
        overview.render(ctx)
    elif view == "heads":
        heads.render(ctx)
    elif view == "example":
        manifests = [NONE] + found["manifests"]
        chosen = st.sidebar.selectbox("manifest with the images", manifests, index=min(1, len(manifests) - 1),
                                      key="manifest", help="the store holds no pixels: images come from this manifest")
        example.render(ctx, _checked_file(root, chosen) if chosen != NONE else None)
    elif view == "key space":
        keyspace.render(ctx)
    else:
        similarity.render(ctx)


def _checked_file(root: Path, rel: str) -> Path:
    try:
        return resolve_under_root(root, rel)
    except PathRefused as err:
        st.error(str(err))
        st.stop()


def _interventions(root: Path, found: dict[str, list[str]]) -> None:
    choices = list(found["results"])
    for s in found["stores"]:
        choices += [f"{s}::{g}" for g in store_groups(resolve_under_root(root, s), "runs/")]
    if not choices:
        st.info("no intervention results under ROOT (an xarray zarr with `visual_dependence` over "
                "(intervention, strength, lang), or a store's runs/ group)")
        return
    wanted = st.query_params.get("results")
    choice = st.sidebar.selectbox("results", choices, index=choices.index(wanted) if wanted in choices else 0, key="results")
    rel, _, group = choice.partition("::")
    path = _checked_file(root, rel)
    table = interventions.result_table(interventions.open_results(path, group or None))
    langs = st.sidebar.multiselect("lang", sorted(table["lang"].unique()), key="iv_lang")
    interventions.render(path, group or None, tuple(sorted(langs)))


main()
