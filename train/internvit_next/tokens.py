"""Visual tokens for the language model: grid tokens (pixel unshuffle or adaptive compression) + spatial tokens.

All tokens are in InternVL's pixel-unshuffle space (width 4D), so `multi_modal_projector` maps them unchanged.
Order per image: grid tokens (raster order of their regions), then conv spatial tokens, then pooled tokens
(coarse to fine) -- spatial tokens are appended, as in LLaVA-SP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .compression import adaptive_regions, budget_for, feature_stats, pixel_stats
from .config import InternViTNextConfig
from .layout import TokenLayout
from .regions import multiscale_regions, region_means, unshuffle_blocks
from .spatial_tokens import SpatialConvTokens


def tokens_per_image(cfg: InternViTNextConfig, grid_h: int, grid_w: int) -> int:
    """Number of visual tokens the LM sees for a grid_h x grid_w patch grid under cfg."""
    if grid_h % 2 or grid_w % 2:
        raise ValueError(f"tokens_per_image: patch grid {grid_h}x{grid_w} must be even (sides multiples of 2*patch)")
    return budget_for(grid_h * grid_w // 4, cfg.keep_ratio) + cfg.conv_tokens + cfg.pool_tokens


class VisualTokenizer(nn.Module):
    """Patch features of each image -> LM-side visual tokens [T, 4D] and their TokenLayout."""

    def __init__(self, cfg: InternViTNextConfig, dim: int, patch_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_size = patch_size
        self.conv = SpatialConvTokens(dim, cfg.n_spatial) if cfg.conv_tokens else None

    def _grid_regions(self, blocks: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor | None:
        """Block regions of the grid tokens; None means the fixed pixel unshuffle (every block)."""
        hb, wb, _ = blocks.shape
        budget = budget_for(hb * wb, self.cfg.keep_ratio)
        if budget == hb * wb:
            return None
        if self.cfg.score_on == "pixels":
            if pixels is None:
                raise ValueError("VisualTokenizer: score_on='pixels' needs the image's pixel values")
            stats = pixel_stats(pixels, 2 * self.patch_size)
        else:
            stats = feature_stats(blocks)
        return adaptive_regions(*stats, budget)

    def one(self, grid: torch.Tensor, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, TokenLayout]:
        """grid [h, w, D] patch features (pixels [C, H, W] for the pixel scorer) -> tokens [T, 4D], layout."""
        h, w, _ = grid.shape
        blocks = unshuffle_blocks(grid)
        hb, wb, e = blocks.shape
        regions = self._grid_regions(blocks, pixels)
        if regions is None:
            toks = [blocks.reshape(hb * wb, e)]
            rows, cols = torch.meshgrid(torch.arange(hb), torch.arange(wb), indexing="ij")
            regs = [torch.stack([rows, cols, rows + 1, cols + 1], -1).reshape(-1, 4) * 2]
        else:
            toks, regs = [region_means(blocks, regions)], [regions * 2]
        kinds = ["grid"] * len(regs[0])
        if self.conv is not None:
            t, r = self.conv(grid)
            toks.append(t)
            regs.append(r)
            kinds += ["spatial_conv"] * len(r)
        if self.cfg.pool_tokens:
            r = multiscale_regions(hb, wb, self.cfg.pool_scales)
            toks.append(region_means(blocks, r))
            regs.append(r * 2)
            kinds += ["spatial_pool"] * len(r)
        layout = TokenLayout((h, w), self.patch_size, torch.cat(regs), tuple(kinds))
        return torch.cat(toks), layout

    def forward(self, grids: Sequence[torch.Tensor], pixels: Sequence[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[TokenLayout]]:
        """Per-image [h, w, D] grids -> tokens of all images concatenated [sum T, 4D], one layout per image."""
        out = [self.one(g, None if pixels is None else pixels[i]) for i, g in enumerate(grids)]
        return torch.cat([t for t, _ in out]), [lay for _, lay in out]
