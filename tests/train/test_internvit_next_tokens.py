"""InternViT-Next visual tokens: pixel unshuffle vs transformers, adaptive compression on hand-built images with
known answers, spatial tokens (conv crops, multi-scale pooling) and their recorded regions."""

from __future__ import annotations

import pytest
import torch

from train.internvit_next import TokenLayout, variant
from train.internvit_next.compression import adaptive_regions, budget_for, feature_stats, pixel_stats
from train.internvit_next.regions import multiscale_regions, pool_bins, region_means, unshuffle_blocks
from train.internvit_next.spatial_tokens import SpatialConvTokens
from train.internvit_next.tiny import tiny_internvl_model
from train.internvit_next.tokens import VisualTokenizer, tokens_per_image

torch.set_num_threads(1)
P = 4  # patch size of the hand-built images: one 2x2 block = 8x8 pixels


@pytest.mark.parametrize("h,w", [(4, 4), (6, 4), (2, 8)])
def test_unshuffle_matches_transformers_pixel_shuffle(h, w):
    g = torch.randn(h, w, 5, dtype=torch.float64)
    ref = tiny_internvl_model().model.pixel_shuffle(g[None], 0.5)[0]
    torch.testing.assert_close(unshuffle_blocks(g), ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="even"):
        unshuffle_blocks(torch.randn(3, 4, 5))


def test_region_means_are_means():
    b = torch.randn(4, 6, 3, dtype=torch.float64)
    regions = torch.tensor([[0, 0, 4, 6], [1, 2, 3, 5], [3, 5, 4, 6]])
    ref = torch.stack([b[r0:r1, c0:c1].mean((0, 1)) for r0, c0, r1, c1 in regions.tolist()])
    torch.testing.assert_close(region_means(b, regions), ref, atol=1e-12, rtol=0)


def _image(detail: tuple[slice, slice] | None, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Flat grey image; noise in the given (rows, cols) pixel slice."""
    img = torch.full((3, size, size), 0.3)
    if detail is not None:
        img[:, detail[0], detail[1]] = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))[
            :, detail[0], detail[1]]
    return img


def _regions(img: torch.Tensor, budget: int) -> torch.Tensor:
    return adaptive_regions(*pixel_stats(img, 2 * P), budget)


def test_compression_spends_tokens_on_the_detailed_quadrant():
    """64 px, patch 4 -> 8x8 blocks; noise in the top-left quadrant. Budget 18 = 16 single blocks there + the
    flat top-right quadrant + the flat bottom half (17 splits: whole, top half, 15 inside the top-left)."""
    regs = _regions(_image((slice(0, 32), slice(0, 32))), 18)
    singles = {tuple(r) for r in regs.tolist() if (r[2] - r[0]) * (r[3] - r[1]) == 1}
    assert singles == {(r, c, r + 1, c + 1) for r in range(4) for c in range(4)}
    assert {tuple(r) for r in regs.tolist()} - singles == {(0, 4, 4, 8), (4, 0, 8, 8)}


def test_compression_of_a_flat_image_is_balanced_and_content_blind():
    """No detail anywhere: ties go to the larger cell, giving equal quarters (4) and sixteenths (16)."""
    assert _regions(_image(None), 4).tolist() == [[0, 0, 4, 4], [0, 4, 4, 8], [4, 0, 8, 4], [4, 4, 8, 8]]
    areas = _regions(_image(None), 16)
    assert set(((areas[:, 2] - areas[:, 0]) * (areas[:, 3] - areas[:, 1])).tolist()) == {4}


def test_compression_follows_text_location():
    """Detail in the bottom-right quadrant: at budget 10 most tokens sit there."""
    regs = _regions(_image((slice(40, 64), slice(40, 64))), 10)
    area = (regs[:, 2] - regs[:, 0]) * (regs[:, 3] - regs[:, 1])
    in_br = (regs[:, 0] >= 4) & (regs[:, 1] >= 4)
    assert int(in_br.sum()) >= 7 and area[in_br].float().mean() < area[~in_br].float().mean()


@pytest.mark.parametrize("budget", [1, 7, 23, 64])
def test_compression_regions_tile_the_grid_exactly(budget):
    regs = _regions(_image((slice(8, 40), slice(16, 56)), seed=budget), budget)
    lay = TokenLayout((16, 16), P, regs * 2, ("grid",) * budget)
    assert len(lay) == budget and torch.equal(lay.coverage(), torch.ones(16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="budget"):
        _regions(_image(None), 65)


def test_feature_scorer_splits_where_features_vary():
    blocks = torch.zeros(4, 4, 3, dtype=torch.float64)
    blocks[0, 3] = 5.0  # one odd block in the top-right corner
    regs = adaptive_regions(*feature_stats(blocks), 5)
    assert [0, 3, 1, 4] in regs.tolist()


def test_budget_and_token_counts():
    assert budget_for(16, 0.5) == 8 and budget_for(3, 0.01) == 1 and budget_for(16, 1.0) == 16
    assert tokens_per_image(variant("A0"), 16, 16) == 64
    assert tokens_per_image(variant("A3a"), 16, 16) == 64 + 6
    assert tokens_per_image(variant("A3b"), 16, 16) == 64 + 5
    assert tokens_per_image(variant("A5"), 16, 16) == 32 + 6 + 5
    with pytest.raises(ValueError, match="even"):
        tokens_per_image(variant("A0"), 15, 16)


def test_pool_bins_match_adaptive_avg_pool():
    x = torch.randn(1, 1, 7, 5, dtype=torch.float64)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, 3)[0, 0]
    for i, (r0, r1) in enumerate(pool_bins(3, 7)):
        for j, (c0, c1) in enumerate(pool_bins(3, 5)):
            torch.testing.assert_close(pooled[i, j], x[0, 0, r0:r1, c0:c1].mean(), atol=1e-12, rtol=0)


def test_multiscale_pooled_tokens_are_region_means():
    b = torch.randn(4, 6, 3, dtype=torch.float64)
    regs = multiscale_regions(4, 6, (1, 2))
    assert regs.tolist()[:2] == [[0, 0, 4, 6], [0, 0, 2, 3]]
    toks = region_means(b, regs)
    torch.testing.assert_close(toks[0], b.mean((0, 1)), atol=1e-12, rtol=0)
    torch.testing.assert_close(toks[4], b[2:, 3:].mean((0, 1)), atol=1e-12, rtol=0)


def test_spatial_conv_tokens_start_as_replicated_crop_means():
    g = torch.randn(12, 12, 4)
    sp = SpatialConvTokens(4, 6)
    toks, regs = sp(g)
    assert toks.shape == (6, 16)
    # token 6 covers the whole map; token 2 the central 2x2 of a 6x6 pooling = patches 4..8
    assert regs[5].tolist() == [0, 0, 12, 12] and regs[1].tolist() == [4, 4, 8, 8]
    for t, (r0, c0, r1, c1) in zip(toks, regs.tolist()):
        torch.testing.assert_close(t, g[r0:r1, c0:c1].mean((0, 1)).repeat(4), atol=1e-5, rtol=0)
    toks.sum().backward()
    assert all(k.grad is not None and k.grad.abs().sum() > 0 for k in sp.kernels)


def test_tokenizer_order_and_layout():
    tok = VisualTokenizer(variant("A5"), dim=4, patch_size=P)
    img = _image((slice(0, 32), slice(0, 32)))
    grid = torch.randn(16, 16, 4)
    toks, lay = tok.one(grid, img)
    assert toks.shape == (tokens_per_image(variant("A5"), 16, 16), 16) and len(lay) == toks.shape[0]
    assert lay.kinds == ("grid",) * 32 + ("spatial_conv",) * 6 + ("spatial_pool",) * 5
    assert torch.equal(lay.coverage("grid"), torch.ones(16, 16, dtype=torch.long))
    assert lay.coverage("grid")[:8, :8].sum() == 64 and (lay.regions[:32, 0] < 8).sum() > 16  # detail kept
    assert torch.equal(lay.pixel_boxes()[-5], torch.tensor([0, 0, 64, 64]))
    with pytest.raises(ValueError, match="pixel"):
        tok.one(grid)
