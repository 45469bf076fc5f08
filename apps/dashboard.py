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
from apps.paths import PathRefused, check_tree_under_root, discover, resolve_under_root
from apps.views import example, heads, interventions, keyspace, overview, similarity
from apps.views.context import ViewContext
from probe.store import IncomparableStoresError, StoreError, TraceStore
from probe.store.check import explain_read_error
from probe.store.lock import held_elsewhere

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
    """ROOT-checked real path of a store (every file in it too); stops the page with a one-line message if refused, not
    a store, or a store whose attributes fail validation. A store being written is shown as far as it is committed."""
    try:
        path = resolve_under_root(root, rel)
        if TraceStore.exists(path):
            check_tree_under_root(root, path)
    except PathRefused as err:
        st.error(str(err))
        st.stop()
    if not TraceStore.exists(path):
        st.error(f"refused: {rel!r} is not a TraceStore under ROOT")
        st.stop()
    try:
        store = TraceStore.open(path)  # validates its attributes; reads and changes nothing else
    except StoreError as err:
        st.error(_relative(str(err), root))
        st.stop()
    if held_elsewhere(path):
        st.info(f"{rel} is being written by another process: the views show its {store.n_examples} committed examples")
    _OPENED.append(path)
    return path


_OPENED: list[Path] = []  # the stores this run of the script opened (the script module is run afresh each time)


def _relative(text: str, root: Path) -> str:
    """A message with ROOT's own path left out of the paths it names."""
    return text.replace(f"{root.resolve()}/", "")


def _failure(err: Exception, root: Path) -> str:
    """One line for an error a view raised: the damaged chunk file if a store has one, else what failed and where."""
    located = explain_read_error(err, list(dict.fromkeys(_OPENED)), budget_s=20)
    if located is not None:
        return _relative(str(located), root)
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    names = " and ".join(str(p.relative_to(root.resolve())) if root.resolve() in p.parents else str(p) for p in dict.fromkeys(_OPENED))
    kind = "" if isinstance(err, (StoreError, PathRefused)) else f"{type(err).__name__}: "
    return _relative(f"the {st.session_state.get('view', 'overview')} view failed" + (f" on {names}" if names else "")
                     + f": {kind}{text}", root)


def _comparable_after(before: Path, after: Path | None) -> Path | None:
    """``after`` if the pair can be compared (as `probe compare` checks it, other example sets allowed), else None
    with a one-line message: the views then show the before store alone."""
    if after is None:
        return None
    why = _pair_problem(before, after, (before / "zarr.json").stat().st_mtime_ns, (after / "zarr.json").stat().st_mtime_ns)
    if why:
        st.error(f"{_relative(why, _root())}; the views show the before store alone")
        return None
    return after


@st.cache_data(show_spinner="checking the pair …", max_entries=32)
def _pair_problem(before: Path, after: Path, stamp_b: int, stamp_a: int) -> str | None:
    """Why two stores cannot be compared (IncomparableStoresError's line), or None; cached per committed state."""
    try:
        TraceStore.open(before).check_comparable(TraceStore.open(after), examples=False)
    except IncomparableStoresError as err:
        return str(err)
    return None


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
    after = _comparable_after(before, _checked_store(root, after_rel) if after_rel else None)
    ds = open_dataset(before)
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
    """ROOT-checked real path of a file or folder (for a folder, every entry in it too); one line and stop if refused."""
    try:
        path = resolve_under_root(root, rel)
        if path.is_dir():
            check_tree_under_root(root, path)
        return path
    except PathRefused as err:
        st.error(str(err))
        st.stop()


def _interventions(root: Path, found: dict[str, list[str]]) -> None:
    choices = list(found["results"])
    for s in found["stores"]:
        try:
            choices += [f"{s}::{g}" for g in store_groups(resolve_under_root(root, s), "runs/")]
        except StoreError:  # a damaged store has no results to offer; opening it says why
            continue
    if not choices:
        st.info("no intervention results under ROOT (a run folder's results.zarr written by `interventions run`, "
                "or a store's runs/ group)")
        return
    wanted = st.query_params.get("results")
    choice = st.sidebar.selectbox("results", choices, index=choices.index(wanted) if wanted in choices else 0, key="results")
    rel, _, group = choice.partition("::")
    path = _checked_file(root, rel)
    table = interventions.result_table(interventions.open_results(path, group or None))
    langs = st.sidebar.multiselect("lang", sorted(table["lang"].unique()), key="iv_lang")
    interventions.render(path, group or None, tuple(sorted(langs)))


def _run() -> None:
    """main(), with whatever a store, a saved comparison or a request does wrong shown as one line, never a traceback."""
    _OPENED.clear()
    try:
        main()
    except Exception as err:  # st.stop / st.rerun are not Exceptions: they pass
        if os.environ.get("VISBLIND_DEBUG", "").strip().lower() in ("1", "true", "yes"):
            raise
        st.error(_failure(err, _root()))


_run()
