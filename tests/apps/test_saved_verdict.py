"""The overview draws the verdict `probe compare --save` saved for the chosen pair, and never one of another pair or a stale one."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import synthetic as S
from probe.analysis import AnalysisConfig, BootstrapConfig
from probe.report import compare
from probe.report.verdict import saved_verdict
from probe.store import TraceStore

CFG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=200))


@pytest.fixture(scope="module")
def saved_root(dash_root, tmp_path_factory):
    """A copy of the dashboard ROOT whose after.zarr holds `compare --save` of before.zarr vs after.zarr, and a third store."""
    root = tmp_path_factory.mktemp("saved") / "root"
    shutil.copytree(dash_root, root)
    summary = compare(root / "before.zarr", root / "after.zarr", root / "c.html", None, CFG, save_to=root / "after.zarr")
    S.write_store(root / "other.zarr", 60, "llava_anyres", seed=5, visual_scale=1.0)
    # a pair whose images are each asked four times (twice per language): the resampled unit is the image
    S.write_store(root / "grouped-before.zarr", 80, seed=6, visual_scale=1.0, keys=False, group_size=4)
    S.write_store(root / "grouped-after.zarr", 80, seed=7, visual_scale=0.5, keys=False, group_size=4)
    compare(root / "grouped-before.zarr", root / "grouped-after.zarr", root / "g.html", None, CFG,
            save_to=root / "grouped-after.zarr")
    return root, summary


@pytest.fixture
def large(app, saved_root, monkeypatch):
    """The app over ``saved_root``, treating every store as large (no live verdict on open)."""
    import apps.views.overview as ov

    monkeypatch.setattr(ov, "AUTO_VERDICT_MAX_EXAMPLES", 10)
    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(saved_root[0]))
    return app


def _verdict_shown(at) -> list[str]:
    return [line[2:] for m in at.markdown for line in m.value.splitlines() if line.startswith("- ")]


def test_overview_shows_the_saved_verdict(large, saved_root):
    root, summary = saved_root
    at = large(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    assert not at.exception, at.exception
    shown = _verdict_shown(at)
    # oracles: the lines `probe compare --save` printed, and the lines drawn again from the saved result groups
    assert shown == summary["verdict"] == saved_verdict(root / "before.zarr", root / "after.zarr", recompute=True)
    # and the H1 numbers are the saved group's: relative change per layer with its simultaneous band
    (h1,) = [line for line in shown if line.startswith("attention (H1)")]
    c = TraceStore.open(root / "after.zarr").read_group("compare/collapse-layers").sel(source="last_prompt")
    got = re.findall(r"L(\d+) ([+-]\d+)% \[([+-]\d+), ([+-]\d+)\]", h1)
    assert [int(g[0]) for g in got] == [int(x) for x in c["layer"].values]
    for g, rel, lo, hi in zip(got, c["layer_rel_change"].values, c["layer_rel_sim_low"].values, c["layer_rel_sim_high"].values):
        assert [int(x) for x in g[1:]] == [int(f"{v * 100:+.0f}") for v in (rel, lo, hi)]
    assert not [b for b in at.button if b.key == "verdict_button"]


def test_overview_refuses_another_pairs_verdict(large, saved_root):
    at = large(before="other.zarr", after="after.zarr", view="overview")
    at.run()
    assert not at.exception, at.exception
    assert not _verdict_shown(at)
    text = " ".join(m.value for m in at.markdown)
    assert "another before store" in text
    want = f"probe compare {saved_root[0] / 'other.zarr'} {saved_root[0] / 'after.zarr'} --out compare.html --save"
    assert want in text


def test_overview_refuses_a_stale_verdict(large, saved_root, tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(saved_root[0], root)  # keeps file times: the copy's saved verdict is still valid
    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(root))
    at = large(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    assert _verdict_shown(at) == saved_root[1]["verdict"]
    st = TraceStore.open(root / "after.zarr")
    ev = st.read_group("eval").load()
    st.write_group("eval", ev.assign(visually_dependent=~ev["visually_dependent"]))  # after re-evaluated
    at = large(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    assert not at.exception, at.exception
    assert not _verdict_shown(at)
    assert "before it changed (groups.eval" in " ".join(m.value for m in at.markdown)
    assert at.button(key="verdict_button")  # still computable on request
    # saved again (another config): the same server shows the new save, not its cached reading of the old one
    again = compare(root / "before.zarr", root / "after.zarr", root / "c2.html", None,
                    AnalysisConfig(bootstrap=BootstrapConfig(n_boot=100)), save_to=root / "after.zarr")
    at = large(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    assert _verdict_shown(at) == again["verdict"] != saved_root[1]["verdict"]


def test_filters_fall_back_from_the_saved_verdict(large, saved_root):
    at = large(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    at.multiselect(key="filter_lang").select("ko").run()
    assert not at.exception, at.exception
    assert not _verdict_shown(at)
    assert "without filters, the saved verdict over all examples is shown" in " ".join(m.value for m in at.markdown)
    assert np.isin(at.dataframe[0].value["lang"], ["ko"]).all()


def test_dependence_table_resamples_images_as_the_verdict(large, saved_root):
    import xarray as xr

    from probe.analysis.stats import BootstrapConfig, bootstrap_scalar_ci

    root = saved_root[0]
    at = large(before="grouped-before.zarr", after="grouped-after.zarr", view="overview")
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    shown = " ".join(_verdict_shown(at))
    for side in ("before", "after"):
        path = root / f"grouped-{side}.zarr"
        ev = xr.open_zarr(path, group="eval", consolidated=False).load()
        units = TraceStore.open(path).dataset["group"].values  # eval rows are in store order here
        for lang in ("en", "ko"):
            keep = (ev["example_lang"].values == lang) & ev["has_partner"].values
            # oracle: cluster bootstrap over images (the store's group), as the dashboard's default config
            want = bootstrap_scalar_ci(ev["visually_dependent"].values[keep].astype(float), BootstrapConfig(), units[keep])
            row = table[(table["store"] == side) & (table["lang"] == lang)].iloc[0]
            np.testing.assert_allclose([row.visual_dependence, row.ci_low, row.ci_high], want, rtol=0, atol=1e-12)
    # the saved verdict (n_boot 200) resamples the same unit: its point estimates are the table's
    for lang in ("en", "ko"):
        b, a = (table[(table["store"] == s) & (table["lang"] == lang)].iloc[0].visual_dependence for s in ("before", "after"))
        assert f"behaviour ({lang}): visual dependence {b * 100:.1f}% [" in shown and f"→ {a * 100:.1f}% [" in shown


def _grids(at) -> dict[str, np.ndarray]:
    import json

    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {s["layout"]["title"]["text"]: S.plotly_array(s["data"][0]["z"]) for s in specs
            if s["data"] and s["data"][0]["type"] == "heatmap"}


def test_heads_grids_from_the_saved_comparison(large, saved_root):
    root = saved_root[0]
    at = large(before="before.zarr", after="after.zarr", view="heads")
    at.run()
    assert not at.exception, at.exception
    assert any("probe compare --save" in c.value for c in at.caption)
    grids = _grids(at)
    c = TraceStore.open(root / "after.zarr").read_group("compare/collapse-layers").sel(source="last_prompt")
    for name, var in (("before", "before"), ("after", "after"), ("after − before", "diff")):
        np.testing.assert_array_equal(grids[name], c[var].values)  # oracle 1: the saved group
    for side in ("before", "after"):  # oracle 2: the store's own mean over examples (float32 storage)
        live = TraceStore.open(root / f"{side}.zarr").dataset["attn_share"].sel(segment="visual", source="last_prompt")
        np.testing.assert_allclose(grids[side], live.mean("example").values, rtol=1e-5)
    other = large(before="other.zarr", after="after.zarr", view="heads")
    other.run()
    assert not any("probe compare --save" in c.value for c in other.caption)  # another pair: computed from the stores
    live = TraceStore.open(root / "other.zarr").dataset["attn_share"].sel(segment="visual", source="last_prompt")
    np.testing.assert_allclose(_grids(other)["before"], live.mean("example").values, rtol=1e-5)
