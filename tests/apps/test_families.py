"""Every view on real captures of each tiny family's layout: LLaVA anyres tiles, InternVL tiles, Qwen2-VL merged patches.

Before and after are two random-weight tiny models of the family (seeds 0 and 1) captured on the same six colour
questions (English and Korean). Oracles: the store read straight with xarray (attention, keys, CKA), the painting
recomputed from the store's `visual_box`, and probe.report's verdict on the same pair.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import synthetic as S
from probe.segments import Segment
from probe.store import TraceStore

FAMILIES = ("llava_next", "internvl-tiled", "qwen2_vl")


def _build(family: str, seed: int):
    from probe.testing import families as tiny

    return {"llava_next": lambda: tiny.tiny_llava_next(seed=seed),
            "internvl-tiled": lambda: tiny.tiny_internvl(seed=seed, max_tiles=4),
            "qwen2_vl": lambda: tiny.tiny_qwen2_vl(seed=seed)}[family]()


@pytest.fixture(scope="module")
def family_root(tmp_path_factory, make_colour_manifest):
    """ROOT with <family>-before.zarr / <family>-after.zarr for each family, and the manifest (with images) under data/."""
    import torch

    from probe.capture import CaptureSpec, capture
    from probe.models import adapter_for

    root = tmp_path_factory.mktemp("families")
    manifest = make_colour_manifest(root / "data", 6)
    for family in FAMILIES:
        for seed, side in ((0, "before"), (1, "after")):
            torch.manual_seed(seed)
            capture(adapter_for(*_build(family, seed)), manifest, root / f"{family}-{side}.zarr",
                    CaptureSpec(keys=True, max_answer_tokens=2), progress=False)
    return root


@pytest.fixture
def fam_app(app, family_root, monkeypatch):
    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(family_root))
    return lambda family, view: app(before=f"{family}-before.zarr", after=f"{family}-after.zarr", view=view)


def _ds(root, family, side):
    return TraceStore.open(root / f"{family}-{side}.zarr").dataset


@pytest.mark.parametrize("family", FAMILIES)
def test_overview_verdict_is_the_reports(fam_app, family_root, family):
    from probe.analysis.pipeline import AnalysisConfig, compare_stores
    from probe.report.verdict import verdict

    at = fam_app(family, "overview")
    at.run()
    assert not at.exception, at.exception
    shown = [line[2:] for m in at.markdown for line in m.value.splitlines() if line.startswith("- ")]
    cfg = AnalysisConfig()
    want = verdict(compare_stores(family_root / f"{family}-before.zarr", family_root / f"{family}-after.zarr", cfg), cfg)
    assert shown == want and any(line.startswith("attention (H1)") for line in shown)


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_grid_is_the_stores(fam_app, family_root, family):
    at = fam_app(family, "heads")
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="heads_layer").select(1)
    at.selectbox(key="heads_head").select(2)
    at.run()
    assert not at.exception, at.exception
    summary = at.dataframe[0].value
    for side in ("before", "after"):
        ds = _ds(family_root, family, side)
        x = ds["attn_share"].sel(segment="visual", source="last_prompt", layer=1, head=2).values
        for lang in ("en", "ko"):
            m = ds["lang"].values == lang
            row = summary[(summary["store"] == side) & (summary["lang"] == lang)].iloc[0]
            np.testing.assert_allclose(row["mean"], x[m].mean(), rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_example_view_paints_the_stores_boxes(fam_app, family_root, family):
    from apps.paint import paint

    at = fam_app(family, "example")
    at.run()
    at.selectbox(key="ex_example").select("ex003")  # a Korean question
    at.selectbox(key="ex_layer").select(1)
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    figs = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    for side in ("before", "after"):
        ds = _ds(family_root, family, side).sel(example="ex003")
        seg = ds["segment_ids"].values
        row = ds["attn_pattern"].sel(layer=1, query="last_prompt").values.mean(0)  # mean over heads
        vis = np.flatnonzero(seg == Segment.VISUAL)
        np.testing.assert_allclose(table.loc[table["segment"] == "visual", side].iloc[0], row[vis].sum(), rtol=1e-5)
        text = np.flatnonzero((seg != Segment.VISUAL) & (seg > 0))  # -1: past the sequence, 0: padding
        # one row per text token, at its store position (the store keeps unpadded sequences)
        got = table.loc[table["segment"] != "visual"].set_index("position")[side]
        assert got.index.tolist() == text.tolist()
        np.testing.assert_allclose(got.to_numpy(), row[text], rtol=1e-5)
        # the heat drawn is each visual token's attention summed over its recorded box
        boxes = ds["visual_box"].values[: len(vis)]
        size = tuple(int(v) for v in ds["image_size"].values)
        heat = next(t for t in figs[side]["data"] if t["type"] == "heatmap")["z"]
        np.testing.assert_allclose(S.plotly_array(heat), paint(row[vis], boxes, size), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_keyspace_centroids_are_the_stores(fam_app, family_root, family):
    at = fam_app(family, "key space")
    at.run()
    assert not at.exception, at.exception
    cent = at.dataframe[0].value
    # oracle: PCA of the pooled non-pad keys of both stores (layer 0, kv head 0), read straight from the stores
    frames = {}
    for side in ("before", "after"):
        ds = _ds(family_root, family, side)
        k = ds["hook_rot_k"].sel(layer=int(ds["layer"].values[0])).isel(kv_head=0).transpose("example", "position", "d_head").values
        seg = ds["segment_ids"].values
        ex, pos = np.nonzero((seg > 0) & np.isfinite(k).all(-1))
        frames[side] = (k[ex, pos].astype(np.float64), seg[ex, pos], ds["lang"].values[ex])
    pooled = np.concatenate([f[0] for f in frames.values()])
    _, _, vt = np.linalg.svd(pooled - pooled.mean(0), full_matrices=False)
    for side, (keys, seg, lang) in frames.items():
        z = (keys - pooled.mean(0)) @ vt[:2].T
        for s in np.unique(seg):
            for lg in ("en", "ko"):
                m = (seg == s) & (lang == lg)
                got = cent[(cent["store"] == side) & (cent["segment"] == Segment(int(s)).label) & (cent["lang"] == lg)]
                np.testing.assert_allclose(np.abs(got[["pc1", "pc2"]].to_numpy()[0]), np.abs(z[m].mean(0)), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_similarity_cka_is_the_stores(fam_app, family_root, family):
    from probe.analysis.cka import cka_matrix

    at = fam_app(family, "similarity & probes")
    at.run()
    assert not at.exception, at.exception
    cka = at.dataframe[0].value
    m = cka_matrix(_ds(family_root, family, "before"), _ds(family_root, family, "after"))
    assert len(cka) == m.sizes["layer_a"]
    for _, r in cka.iterrows():
        np.testing.assert_allclose(r["cka"], float(m.sel(layer_a=r["layer"], layer_b=r["layer"])), rtol=1e-9)
