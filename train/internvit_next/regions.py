"""Region tokens over InternVL's pixel-unshuffled 2x2 blocks: exact unshuffle, region means, pooling bins."""

from __future__ import annotations

import torch


def unshuffle_blocks(grid: torch.Tensor) -> torch.Tensor:
    """[h, w, D] patch features -> [h/2, w/2, 4D], channel order of transformers' InternVL pixel_shuffle.

    Block (i, j) holds [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)] (InternVL 1.5+, scale 0.5).
    """
    h, w, d = grid.shape
    if h % 2 or w % 2:
        raise ValueError(f"unshuffle_blocks: patch grid {h}x{w} must be even (image sides multiples of 2*patch)")
    return grid.reshape(h // 2, 2, w // 2, 2, d).permute(0, 2, 1, 3, 4).reshape(h // 2, w // 2, 4 * d)


def region_means(blocks: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean block vector of each region: blocks [hb, wb, E], regions [R, 4] in blocks -> [R, E].

    Summed-area table, so each region costs O(1) whatever its size; differentiable.
    """
    hb, wb, e = blocks.shape
    sat = torch.zeros(hb + 1, wb + 1, e, dtype=blocks.dtype, device=blocks.device)
    sat[1:, 1:] = blocks.cumsum(0).cumsum(1)
    r0, c0, r1, c1 = regions.to(blocks.device).unbind(-1)
    total = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return total / ((r1 - r0) * (c1 - c0)).to(blocks.dtype)[:, None]


def pool_bins(n: int, size: int) -> list[tuple[int, int]]:
    """Bins [start, end) of adaptive average pooling of `size` cells into n (torch's rule)."""
    return [((i * size) // n, -((-(i + 1) * size) // n)) for i in range(n)]


def multiscale_regions(hb: int, wb: int, scales: tuple[int, ...]) -> torch.Tensor:
    """Regions [sum s^2, 4] (blocks) of an s x s pooling grid per scale, coarse to fine, raster order."""
    out = []
    for s in scales:
        for r0, r1 in pool_bins(s, hb):
            for c0, c1 in pool_bins(s, wb):
                out.append((r0, c0, r1, c1))
    return torch.tensor(out, dtype=torch.long)
