"""AppTest per view: the numbers the dashboard shows equal the store's (computed here straight from xarray)."""

from __future__ import annotations

import numpy as np

from probe.analysis.stats import BootstrapConfig, bootstrap_scalar_ci
from probe.segments import Segment
from probe.store import TraceStore


def test_overview_dependence_and_verdict(app, dash_root):
    at = app(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    cfg = BootstrapConfig()
    for store in ("before", "after"):
        import xarray as xr

        ev = xr.open_zarr(dash_root / f"{store}.zarr", group="eval", consolidated=False).load()
        for lang in ("en", "ko"):
            keep = (ev["example_lang"].values == lang) & ev["has_partner"].values
            want = bootstrap_scalar_ci(ev["visually_dependent"].values[keep].astype(float), cfg)
            row = table[(table["store"] == store) & (table["lang"] == lang)].iloc[0]
            np.testing.assert_allclose([row.visual_dependence, row.ci_low, row.ci_high], want, rtol=0, atol=1e-12)
            assert row.n == keep.sum()
    text = " ".join(m.value for m in at.markdown)
    assert "attention (H1)" in text and "behaviour (en)" in text


def test_overview_filter_by_lang(app, dash_root):
    at = app(before="before.zarr", after="after.zarr")
    at.run()
    at.multiselect(key="filter_lang").select("ko").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["lang"]) == {"ko"}


def test_heads_grid_equals_store_mean(app, dash_root):
    at = app(before="before.zarr", after="after.zarr", view="heads")
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="heads_layer").select(2)
    at.selectbox(key="heads_head").select(3)
    at.multiselect(key="filter_question_type").select("count")
    at.run()
    assert not at.exception, at.exception
    summary = at.dataframe[0].value
    for store in ("before", "after"):
        ds = TraceStore.open(dash_root / f"{store}.zarr").dataset
        x = ds["attn_share"].sel(segment="visual", source="last_prompt", layer=2, head=3)
        for lang in ("en", "ko"):
            m = (ds["lang"].values == lang) & (ds["question_type"].values == "count")
            row = summary[(summary["store"] == store) & (summary["lang"] == lang)].iloc[0]
            np.testing.assert_allclose(row["mean"], float(x.values[m].mean()), rtol=1e-6)
            assert row["count"] == m.sum()


def test_example_view_token_attention(app, dash_root):
    at = app(before="before.zarr", after="after.zarr", view="example")
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="ex_example").select("ex7")
    at.selectbox(key="ex_layer").select(1)
    at.selectbox(key="ex_head").select(2)
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    for store in ("before", "after"):
        ds = TraceStore.open(dash_root / f"{store}.zarr").dataset
        row = ds["attn_pattern"].sel(example="ex7", layer=1, head=2, query="last_prompt").values
        seg = ds["segment_ids"].sel(example="ex7").values
        vis = row[seg == Segment.VISUAL].sum()
        np.testing.assert_allclose(table.loc[table["segment"] == "visual", store].iloc[0], vis, rtol=1e-6)
        text_pos = np.flatnonzero((seg != Segment.VISUAL) & (seg != Segment.PAD))
        got = table.loc[table["segment"] != "visual"].set_index("position")[store]
        np.testing.assert_allclose(got.loc[text_pos].to_numpy(), row[text_pos], rtol=1e-6)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["before: attention on the image"] == f"{table.loc[table['segment'] == 'visual', 'before'].iloc[0]:.3f}"
    assert "image: data/img/quad.png" in " ".join(c.value for c in at.caption)
    tokens = [str(t) for t in TraceStore.open(dash_root / "before.zarr").dataset["token"].sel(example="ex7").values]
    shown = table.loc[table["segment"] != "visual", "token"].tolist()
    want = [t.replace("\n", "⏎") for t, s in zip(tokens, ds["segment_ids"].sel(example="ex7").values)
            if s not in (Segment.VISUAL, Segment.PAD)]  # newlines are shown as ⏎
    assert shown == want


def test_keyspace_centroids(app, dash_root):
    at = app(before="before.zarr", after="after.zarr", view="key space")
    at.run()
    assert not at.exception, at.exception
    cent = at.dataframe[0].value
    # PCA is fitted on pooled keys; the visual centroid is far from the text one where keys were shifted (before: +3)
    b = cent[cent["store"] == "before"].groupby("segment")[["pc1", "pc2"]].mean()
    a = cent[cent["store"] == "after"].groupby("segment")[["pc1", "pc2"]].mean()
    gap_b = np.linalg.norm(b.loc["visual"] - b.loc["text"])
    gap_a = np.linalg.norm(a.loc["visual"] - a.loc["text"])
    assert gap_b > gap_a > 0


def test_similarity_cka_equals_analysis(app, dash_root):
    from probe.analysis.cka import cka_matrix

    at = app(before="before.zarr", after="after.zarr", view="similarity & probes")
    at.run()
    assert not at.exception, at.exception
    cka = at.dataframe[0].value
    m = cka_matrix(TraceStore.open(dash_root / "before.zarr").dataset, TraceStore.open(dash_root / "after.zarr").dataset)
    for _, r in cka.iterrows():
        np.testing.assert_allclose(r["cka"], float(m.sel(layer_a=r["layer"], layer_b=r["layer"])), rtol=1e-9)
    probes = at.dataframe[1].value
    assert set(probes["store"]) == {"before", "after"} and probes["accuracy"].between(0, 1).all()


def test_overview_verdict_on_request_for_large_stores(app, monkeypatch):
    import apps.views.overview as ov

    monkeypatch.setattr(ov, "AUTO_VERDICT_MAX_EXAMPLES", 10)
    at = app(before="before.zarr", after="after.zarr", view="overview")
    at.run()
    assert not at.exception, at.exception
    assert "attention (H1)" not in " ".join(m.value for m in at.markdown)
    assert len(at.dataframe) == 1  # the behavioural table is drawn at once
    at.button(key="verdict_button").click().run()
    assert not at.exception, at.exception
    assert "attention (H1)" in " ".join(m.value for m in at.markdown)
