"""Painting attention onto the image from the store's token layout: LLaVA anyres tiles, InternVL tiles, Qwen2-VL merged patches."""

from __future__ import annotations

import numpy as np
import pytest
import synthetic as S

from apps.paint import display_size, paint
from apps.views.example import example_record, visual_values
from probe.segments import Segment
from probe.store import TraceStore

FAMILIES = ("llava_anyres", "internvl", "qwen2_vl")


def _pixels(box: np.ndarray, size: tuple[int, int], max_side: int = 384) -> np.ndarray:
    """Oracle: display pixels whose centre lies in ``box`` (original pixels), by brute force."""
    h, w, scale = display_size(size, max_side)
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            cx, cy = (x + 0.5) / scale, (y + 0.5) / scale
            out[y, x] = box[0] <= cx < box[2] and box[1] <= cy < box[3]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_one_token_paints_exactly_its_box(family):
    lay = S.layout(family)
    size = tuple(int(x) for x in lay["image_size"])
    for j in range(len(lay["tile"])):
        values = np.zeros(len(lay["tile"]))
        values[j] = 0.7
        heat = paint(values, lay["box"], size, max_side=96)
        want = _pixels(lay["box"][j], size, max_side=96)
        np.testing.assert_array_equal(heat > 0, want)
        np.testing.assert_allclose(heat[want], 0.7, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiles_cover_image_and_overlaps_add(family):
    lay = S.layout(family)
    size = tuple(int(x) for x in lay["image_size"])
    ones = np.ones(len(lay["tile"]))
    heat = paint(ones, lay["box"], size, max_side=96)
    # every pixel is covered once per tile whose box contains it (thumbnail + one high-res tile = 2; Qwen2-VL = 1)
    want = sum(_pixels(tb, size, 96).astype(float) for tb in np.unique(lay["tile_box"], axis=0))
    np.testing.assert_array_equal(heat, want)
    for t in np.unique(lay["tile"]):
        one = paint(ones, lay["box"], size, max_side=96, keep=lay["tile"] == t)
        tb = lay["tile_box"][lay["tile"] == t][0]
        np.testing.assert_array_equal(one, _pixels(tb, size, 96).astype(float))


@pytest.mark.parametrize("family", FAMILIES)
def test_store_record_aligns_visual_tokens_with_layout(family, tmp_path):
    path = S.write_store(tmp_path / f"{family}.zarr", 3, family, seed=2, keys=False, eval_group=False, extra_position=2)
    lay = S.layout(family)
    ds = TraceStore.open(path).dataset
    rec = example_record(path, "ex1", 1, "answer_0")
    np.testing.assert_array_equal(rec.boxes, lay["box"])
    np.testing.assert_array_equal(rec.tile, lay["tile"])
    assert rec.image_size == tuple(int(x) for x in lay["image_size"])
    row = ds["attn_pattern"].sel(example="ex1", layer=1, query="answer_0").values  # [head, position]
    seg = ds["segment_ids"].sel(example="ex1").values
    np.testing.assert_allclose(visual_values(rec, 2), row[2][seg == Segment.VISUAL], rtol=0, atol=0)
    np.testing.assert_allclose(visual_values(rec, None), row.astype(np.float64).mean(0)[seg == Segment.VISUAL], rtol=1e-12)
    assert rec.tokens[rec.query_position] == str(ds["token"].sel(example="ex1").values[int(ds["query_position"].sel(example="ex1", query="answer_0"))])
    assert len(rec.tokens) == int((seg != Segment.PAD).sum())  # pads dropped


def test_bad_layout_raises():
    with pytest.raises(ValueError, match="does not match"):
        paint(np.ones(3), np.zeros((2, 4)), (10, 10))
    with pytest.raises(ValueError, match="positive"):
        display_size((0, 5))
