"""The report's example pictures (issue 24): chosen by the stated rule, the painted values are the store's attention."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

import synthetic as S
from probe.vocab import to_str
from probe.report.examples import chosen_examples, example_figures, last_prompt_attention
from probe.report.paint import paint
from probe.segments import Segment
from probe.store import TraceStore


def test_examples_follow_the_rule_and_paint_the_stores_attention(tmp_path) -> None:
    S.write_store(tmp_path / "b.zarr", 24, seed=0)
    S.write_store(tmp_path / "a.zarr", 24, seed=1, visual_scale=0.3)
    b, a = TraceStore.open(tmp_path / "b.zarr").dataset, TraceStore.open(tmp_path / "a.zarr").dataset
    chosen = chosen_examples(b, a, per_lang=2)
    ids, langs = to_str(b["example"].values), to_str(b["lang"].values)
    expected = [e for lg in ("en", "ko") for e in ids[langs == lg][:2]]  # oracle: first two per language, store order
    assert sorted(chosen) == sorted(expected) and chosen == [e for e in ids if e in expected]
    e = chosen[0]
    i = int(np.flatnonzero(ids == e)[0])
    values, boxes, size = last_prompt_attention(b, e)
    seg = b["segment_ids"].values[i]
    row = b["attn_pattern"].values[i, :, :, list(b["query"].values).index("last_prompt"), :]  # [layer, head, position]
    np.testing.assert_allclose(values, row.mean((0, 1))[seg == int(Segment.VISUAL)], rtol=1e-6, atol=0)
    figs = example_figures(TraceStore.open(tmp_path / "b.zarr"), TraceStore.open(tmp_path / "a.zarr"))
    plots = [f for f in figs if isinstance(f, go.Figure)]
    assert len(plots) == len(chosen) and "first 2 image-dependent examples of each language" in figs[0]
    heat = [t for t in plots[0].data if isinstance(t, go.Heatmap)][0]
    np.testing.assert_allclose(np.asarray(heat.z), paint(values, boxes, size, max_side=96), rtol=1e-6, atol=1e-9)
    assert all(isinstance(t, go.Image) and t.source.startswith("data:image/png") for t in plots[0].data[::2])
