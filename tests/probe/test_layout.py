"""Visual rows in decoder order and the visual layout, on every family's tiny model.

Oracles: the decoder's own input at the VISUAL positions (rows), and the pixels (layout): a token's box in
the original image must cover the colour that the processor put in the pixel_values patch that fed it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.models.layout import VISUAL_SITES, VisualLayout
from probe.segments import Segment
from probe.testing.hand_built import forward_with_hooks

FAMILIES = ["llava", "llava_next", "llava_onevision", "internvl", "internvl-tiled", "qwen2_vl", "qwen2_5_vl",
            "smolvlm", "idefics3", "smolvlm-split", "idefics3-split", "gemma3", "qwen3_vl"]
ANYRES = {"llava_next", "llava_onevision"}
# nine colours far apart
PALETTE = np.array([(230, 20, 20), (20, 200, 40), (30, 40, 230), (240, 230, 20), (20, 220, 230), (220, 30, 220),
                    (250, 250, 250), (10, 10, 10), (128, 128, 128)], dtype=np.float64)
# (height, width): wide and tall, so anyres grids, InternVL tiles and Idefics3 splits all differ from square
SIZES = [(45, 96), (100, 40)]
# images whose anyres tile grid unpads to nothing (issue 9, item 5)
WIDE = [(12, 300), (40, 500), (300, 12)]
# on the tiny OneVision (anyres_max_4), this image's unpadded grid is shrunk, and this one's kept whole
SHRUNK, WHOLE = (40, 48), (24, 20)


def _onevision_shrinks(adapter, size: tuple[int, int]) -> bool:
    """Whether LLaVA-OneVision shrinks this image's grid: its published rule, on transformers' own unpadding."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image

    cfg = adapter.model.config
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    rows, cols = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    height, width = unpad_image(torch.empty(0, rows * side, cols * side), torch.tensor(size)).shape[1:]
    return math.sqrt(height * width / (int(cfg.vision_aspect_ratio.removeprefix("anyres_max_")) * side**2)) > 1.1


GRID = (2, 3)  # colour regions per column and row of the test image (not square: catches a transposed grid)


def _grid_image(height: int, width: int, shift: int) -> Image.Image:
    """A GRID of PALETTE colours (rotated by `shift`): region (i, j) covers rows i*h/2.., cols j*w/3.."""
    ys, xs = np.mgrid[0:height, 0:width]
    region = (GRID[0] * ys // height) * GRID[1] + (GRID[1] * xs // width)
    return Image.fromarray(PALETTE[(region + shift) % len(PALETTE)].astype(np.uint8))


def _region(x: float, y: float, size: tuple[int, int]) -> tuple[int, int]:
    height, width = size
    return (int(GRID[0] * min(max(y, 0), height - 1e-6) // height),
            int(GRID[1] * min(max(x, 0), width - 1e-6) // width))


@pytest.fixture(scope="module")
def adapters(tiny_adapter):
    """family -> its adapter over the session's tiny model."""
    return tiny_adapter


def _examples(sizes) -> list[Example]:
    return [Example(f"ex{i}", _grid_image(h, w, i), "What is here?") for i, (h, w) in enumerate(sizes)]


def _run(adapter, batch):
    """Forward `batch`; returns each visual site's main tensor and the first decoder layer's input."""
    seen = {}

    def keep(site, kind):
        def hook(module, args, kwargs, output=None):
            value = output if kind == "output" else (args, kwargs)
            seen[site] = adapter.site_tensor(site, value)
        return hook

    hooks = [
        adapter.module("vision.out").register_forward_hook(keep("vision.out", "output"), with_kwargs=True),
        adapter.module("projector.in").register_forward_pre_hook(keep("projector.in", "input"), with_kwargs=True),
        adapter.module("projector.out").register_forward_hook(keep("projector.out", "output"), with_kwargs=True),
        adapter.module("lm.layer.{i}.resid", 0).register_forward_pre_hook(keep("decoder.in", "input"), with_kwargs=True),
    ]
    forward_with_hooks(adapter.model, batch.inputs, hooks)
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_projector_rows_are_the_decoder_inputs(adapters, family):
    adapter = adapters(family)
    sizes = SIZES + (WIDE if family in ANYRES else [])
    batch = adapter.build_inputs(_examples(sizes), "right")
    seen = _run(adapter, batch)
    counts = adapter.visual_row_counts(batch)
    n_visual = adapter.n_visual_tokens(batch.segments).tolist()
    assert counts["projector.out"] == n_visual
    for site in VISUAL_SITES:
        rows = adapter.visual_rows(site, seen[site], batch)
        assert [len(r) for r in rows] == counts[site], site
    rows = adapter.visual_rows("projector.out", seen["projector.out"], batch)
    for b in range(len(sizes)):
        fed = seen["decoder.in"][b, adapter.visual_positions(batch.segments, b)]
        torch.testing.assert_close(rows[b], fed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_patch_rows_in_decoder_order(adapters, family):
    """The merger applied to the ordered patch rows (4 consecutive per token) gives the ordered token rows."""
    adapter = adapters(family)
    batch = adapter.build_inputs(_examples(SIZES), "right")
    seen = _run(adapter, batch)
    patches = adapter.visual_rows("projector.in", seen["projector.in"], batch)
    tokens = adapter.visual_rows("projector.out", seen["projector.out"], batch)
    with torch.no_grad():
        for p, t in zip(patches, tokens):
            torch.testing.assert_close(adapter.projector(p), t, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(adapter.visual_rows("vision.out", seen["vision.out"], batch)), torch.cat(patches),
                               atol=0, rtol=0)


def _tile_images(adapter, batch, b: int) -> list[np.ndarray]:
    """Example b's tiles as the vision tower sees them, [H, W, 3] in 0..255 (the processor's normalisation undone)."""
    ip = adapter.processor.image_processor
    mean, std = np.asarray(ip.image_mean), np.asarray(ip.image_std)
    pv = batch.inputs["pixel_values"]
    n_tiles = adapter.visual_tiles(batch)
    if "image_grid_thw" in batch.inputs:  # Qwen: undo the processor's flat patch layout (gh/m, gw/m, m, m, C, tp, p, p)
        _, gh, gw = batch.inputs["image_grid_thw"][b].tolist()
        vcfg = adapter.model.config.vision_config
        p, m, tp = vcfg.patch_size, vcfg.spatial_merge_size, vcfg.temporal_patch_size
        start = int(batch.inputs["image_grid_thw"][:b].prod(-1).sum())
        flat = pv[start:start + gh * gw].reshape(gh // m, gw // m, m, m, 3, tp, p, p)[:, :, :, :, :, 0]
        tiles = [flat.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)]
    elif pv.dim() == 5:  # [batch, tiles, C, H, W] (anyres, Idefics3)
        tiles = list(pv[b, :n_tiles[b]])
    else:  # [tiles of every example, C, H, W] in order (one per example for LLaVA-1.5)
        tiles = list(pv[sum(n_tiles[:b]):sum(n_tiles[:b + 1])])
    return [(t.numpy().transpose(1, 2, 0) * std + mean) * 255 for t in tiles]


def _token_grid(adapter, batch, b: int, tile: np.ndarray) -> tuple[int, int]:
    """Rows and columns of a tile's token grid (test-side: from the config, not the adapter)."""
    cfg = adapter.model.config
    if "image_grid_thw" in batch.inputs:
        m = cfg.vision_config.spatial_merge_size
        _, gh, gw = batch.inputs["image_grid_thw"][b].tolist()
        return gh // m, gw // m
    vcfg = cfg.vision_config
    size = vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0]
    patch = vcfg.patch_size if isinstance(vcfg.patch_size, int) else vcfg.patch_size[0]
    side = size // patch
    if cfg.model_type == "internvl":
        side = int(side * cfg.downsample_ratio)
    elif cfg.model_type in ("smolvlm", "idefics3"):
        side //= cfg.scale_factor
    elif cfg.model_type == "gemma3":  # patches average-pooled to mm_tokens_per_image
        side = math.isqrt(cfg.mm_tokens_per_image)
    return side, side


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]).clip(0) * (boxes[..., 3] - boxes[..., 1]).clip(0)


def _assert_views_tile_their_region(layout: VisualLayout, anyres: bool) -> None:
    """Within one view of the image (a tile; for anyres the base tile, then the whole grid), the token boxes tile a
    rectangle (no overlap, no gap), which is the view's tiles' region (the anyres grid: what unpadding kept of it)."""
    box, tile_box = layout.box.astype(np.float64), layout.tile_box.astype(np.float64)
    views = (layout.tile > 0).astype(int) if anyres else layout.tile
    for view in np.unique(views):
        mine = box[views == view]
        overlap = np.concatenate([np.maximum(mine[:, None, :2], mine[None, :, :2]),
                                  np.minimum(mine[:, None, 2:], mine[None, :, 2:])], -1)
        inter = _area(overlap)
        np.fill_diagonal(inter, 0)
        assert inter.max() < 1e-3, f"view {view}: token boxes overlap"
        hull = np.concatenate([mine[:, :2].min(0), mine[:, 2:].max(0)])
        assert abs(_area(mine).sum() / _area(hull) - 1) < 1e-4, f"view {view}: gaps between token boxes"
        if not (anyres and view == 1):
            region = sum(_area(t) for t in np.unique(tile_box[views == view], axis=0))
            assert abs(_area(hull) / region - 1) < 1e-4, f"view {view}: tokens cover {_area(hull)} of {region}"


def _nearest(colour: np.ndarray) -> int:
    return int(np.argmin(((PALETTE - colour) ** 2).sum(-1)))


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_boxes_show_what_fed_the_token(adapters, family):
    adapter = adapters(family)
    sizes = SIZES + (WIDE[:1] if family in ANYRES else []) + ([SHRUNK] if family == "llava_onevision" else [])
    batch = adapter.build_inputs(_examples(sizes), "right")
    layouts = adapter.visual_layout(batch)
    for b, (layout, size) in enumerate(zip(layouts, sizes)):
        height, width = size
        n = int(adapter.n_visual_tokens(batch.segments[b:b + 1])[0])
        assert isinstance(layout, VisualLayout) and len(layout) == n and layout.image_size == size
        box, tile_box = layout.box.astype(np.float64), layout.tile_box.astype(np.float64)
        assert (box[:, 2] > box[:, 0]).all() and (box[:, 3] > box[:, 1]).all(), "empty token box"
        assert (box[:, :2] >= 0).all() and (box[:, 2] <= width + 1e-3).all() and (box[:, 3] <= height + 1e-3).all()
        if family == "llava_onevision" and _onevision_shrinks(adapter, size):  # a shrunk token blends across tiles:
            centre = (box[:, :2] + box[:, 2:]) / 2                               # its tile is the one under its centre
            assert (centre >= tile_box[:, :2]).all() and (centre <= tile_box[:, 2:]).all()
        else:
            assert (box[:, :2] >= tile_box[:, :2] - 1e-3).all() and (box[:, 2:] <= tile_box[:, 2:] + 1e-3).all()
        _assert_views_tile_their_region(layout, anyres=family in ANYRES)
        tiles = _tile_images(adapter, batch, b)
        used = sorted(set(layout.tile.tolist()))
        if size in WIDE:  # the grid tiles hold padding only: the base tile alone reaches the decoder
            assert used == [0]
        else:
            assert used == list(range(len(tiles))), "every tile feeds some token"
        checked = 0
        for k in range(n):
            tile = tiles[layout.tile[k]]
            rows, cols = _token_grid(adapter, batch, b, tile)
            th, tw = tile.shape[0] / rows, tile.shape[1] / cols  # tile pixels per token
            x0, y0, x1, y1 = box[k]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            # resampling blurs region borders by about a pixel of the tile: skip centres that close to one
            mx, my = (x1 - x0) / tw, (y1 - y0) / th
            region = _region(cx, cy, size)
            if any(_region(cx + dx, cy + dy, size) != region for dx in (-mx, mx) for dy in (-my, my)):
                continue
            centre = tile[int((layout.row[k] + 0.5) * th), int((layout.col[k] + 0.5) * tw)]
            want = (region[0] * GRID[1] + region[1] + b) % len(PALETTE)
            assert _nearest(centre) == want, f"example {b} token {k}: tile {layout.tile[k]} ({layout.row[k]}, {layout.col[k]})"
            checked += 1
        assert checked >= max(2, n // 3), f"only {checked} of {n} token centres lie inside one colour region"


@pytest.mark.parametrize("family", sorted(ANYRES))
@pytest.mark.parametrize("size", WIDE)
def test_wide_anyres_image_runs(adapters, family, size):
    """A grid that unpads to no rows (or columns): the model feeds the base tile only, and so do we."""
    adapter = adapters(family)
    batch = adapter.build_inputs(_examples([size]))
    with torch.no_grad():
        adapter.model(**batch.inputs)
    side = adapter.model.config.vision_config.image_size // adapter.model.config.vision_config.patch_size
    assert int(adapter.n_visual_tokens(batch.segments)[0]) == side * side  # the base tile's patches only
    # a tall image keeps grid rows of no width: the model still closes each with a newline
    n_newlines = int((batch.segments == Segment.IMAGE_SEP).sum())
    assert (n_newlines > 0) == (size[0] > size[1])
    layout = adapter.visual_layout(batch)[0]
    assert (layout.tile == 0).all() and np.allclose(layout.tile_box, [0, 0, size[1], size[0]])


def test_layout_rejects_bad_arrays():
    ok = dict(tile=np.zeros(2, np.int32), row=np.zeros(2, np.int32), col=np.zeros(2, np.int32),
              box=np.zeros((2, 4), np.float32), tile_box=np.zeros((2, 4), np.float32), image_size=(4, 4))
    assert len(VisualLayout(**ok)) == 2
    with pytest.raises(ValueError, match="VisualLayout.row"):
        VisualLayout(**{**ok, "row": np.zeros(2, np.int64)})
    with pytest.raises(ValueError, match="VisualLayout.box"):
        VisualLayout(**{**ok, "box": np.zeros((3, 4), np.float32)})


class _Stop(Exception):
    pass


def _visual_inputs(adapter, batch) -> list[torch.Tensor]:
    """The decoder's input at each example's VISUAL positions (the forward stops at the first decoder layer)."""
    fed = {}

    def grab(module, args, kwargs):
        fed["h"] = adapter.site_tensor("lm.layer.{i}.resid", (args, kwargs))
        raise _Stop

    handle = adapter.module("lm.layer.{i}.resid", 0).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**batch.inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return [fed["h"][b, adapter.visual_positions(batch.segments, b)] for b in range(len(batch.segments))]


def _cell(adapter, batch, b: int, tile: int, row: int, col: int):
    """An index into pixel_values selecting the pixels of token (tile, row, col) of example b (test-side layout)."""
    pv = batch.inputs["pixel_values"]
    if "image_grid_thw" in batch.inputs:  # flat patches, (gh/m, gw/m, m, m) order: a merged token's m² patches in a run
        m = adapter.model.config.vision_config.spatial_merge_size
        _, _, gw = batch.inputs["image_grid_thw"][b].tolist()
        start = int(batch.inputs["image_grid_thw"][:b].prod(-1).sum()) + (row * (gw // m) + col) * m * m
        return (slice(start, start + m * m),)
    rows, cols = _token_grid(adapter, batch, b, None)
    th, tw = pv.shape[-2] // rows, pv.shape[-1] // cols
    space = (slice(row * th, (row + 1) * th), slice(col * tw, (col + 1) * tw))
    if pv.dim() == 5:
        return (b, tile, slice(None), *space)
    return (sum(adapter.visual_tiles(batch)[:b]) + tile, slice(None), *space)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_positions_follow_the_patches(adapters, family):
    """Sequence order: with the vision tower's attention silenced each token sees only its own patches, so changing
    the pixels of token k's (tile, row, col) changes the decoder input at VISUAL position k and nowhere else."""
    adapter = adapters(family)
    sizes = SIZES[:1] if family != "llava_onevision" else [SHRUNK, WHOLE]
    batch = adapter.build_inputs(_examples(sizes), "right")
    layouts = adapter.visual_layout(batch)
    attention = [m for m in adapter.component("vision").modules() if type(m).__name__.endswith("Attention")]
    assert attention

    def silence(module, args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    hooks = [m.register_forward_hook(silence) for m in attention]
    try:
        base = _visual_inputs(adapter, batch)
        for b, layout in enumerate(layouts):
            shrunk = family == "llava_onevision" and _onevision_shrinks(adapter, sizes[b])
            assert shrunk == (sizes[b] == SHRUNK)
            for k in np.random.default_rng(b).permutation(len(layout))[:24]:
                key = (layout.tile[k], layout.row[k], layout.col[k])
                inputs = dict(batch.inputs)
                inputs["pixel_values"] = batch.inputs["pixel_values"].clone()
                inputs["pixel_values"][_cell(adapter, batch, b, *key)] += 3.0
                moved = _visual_inputs(adapter, type(batch)(inputs, batch.segments, None, batch.example_ids,
                                                            batch.image_sizes))
                changed = {int(j) for j in ((moved[b] - base[b]).abs().amax(-1) > 1e-6).nonzero().flatten()}
                assert k in changed, f"example {b}: token {k} at {key} did not see its own patch"
                if not shrunk:  # each token's own patches only (OneVision's shrinking blends neighbours)
                    same = {j for j in range(len(layout)) if (layout.tile[j], layout.row[j], layout.col[j]) == key}
                    assert changed == same, f"example {b}: the patch of token {k} at {key} moved tokens {sorted(changed)}"
                assert all(torch.equal(moved[o], base[o]) for o in range(len(base)) if o != b)
    finally:
        for h in hooks:
            h.remove()
