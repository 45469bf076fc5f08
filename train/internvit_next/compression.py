"""Adaptive token compression: a detail-driven k-d partition of the 2x2-block grid into `budget` regions.

Replaces InternVL's fixed pixel unshuffle (one token per 2x2 patch block). The unit stays InternVL's block
token (so a 1-block region is exactly the pixel-unshuffle token and the projector needs no change); a larger
region's token is the mean of its block tokens (= pixel unshuffle of 2x2-average-pooled features).

Scorer: a cell's detail is its sum of squared deviations (SSE) of a signal around the cell mean -- pixel
values by default (text strokes and texture score high, flat areas zero), or the block feature vectors.
Partition: start from the whole grid; repeatedly split the cell with the largest SSE in two halves along its
longer side until there are `budget` cells (each split adds exactly one token, so any budget from 1 to the
number of blocks is met exactly). Ties (e.g. flat cells, SSE 0) go to the larger cell, then raster order, so a
flat image becomes a balanced coarse grid.

Follows the greedy variance-splitting of k-d / quadtree image coding (e.g. Samet 1984) applied to ViT tokens,
in the spirit of content-adaptive token merging (ToMe, Bolya et al. 2023; PyramidDrop keeps tokens by
attention instead). Deliberate choices: axis-aligned rectangles so that every token has an exact image region;
the scorer is training-free (no learned scorer, so it cannot be fooled by a random-weight encoder).
"""

from __future__ import annotations

import heapq

import torch


def budget_for(n_blocks: int, keep_ratio: float) -> int:
    """Tokens kept for an image of n_blocks 2x2 blocks at keep_ratio (at least 1)."""
    return max(1, min(n_blocks, round(keep_ratio * n_blocks)))


def pixel_stats(pixels: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per block of block x block pixels: channel sums [hb, wb, C], sum of squares [hb, wb], pixel count."""
    c, hh, ww = pixels.shape
    if hh % block or ww % block:
        raise ValueError(f"pixel_stats: image {hh}x{ww} not a multiple of the block size {block}")
    x = pixels.detach().double().reshape(c, hh // block, block, ww // block, block)
    return x.sum((2, 4)).permute(1, 2, 0), x.pow(2).sum((0, 2, 4)), block * block


def feature_stats(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per block token [hb, wb, E]: the vector itself, its squared norm, count 1."""
    b = blocks.detach().double()
    return b, b.pow(2).sum(-1), 1


def _sat(x: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero first row and column."""
    pad = torch.zeros((x.shape[0] + 1, x.shape[1] + 1) + tuple(x.shape[2:]), dtype=x.dtype)
    pad[1:, 1:] = x.cumsum(0).cumsum(1)
    return pad


def adaptive_regions(sums: torch.Tensor, sumsq: torch.Tensor, count: int, budget: int) -> torch.Tensor:
    """Partition an [hb, wb] block grid into `budget` rectangles by detail; [budget, 4] blocks, raster order.

    sums [hb, wb, C] and sumsq [hb, wb] are per-block statistics of the scored signal (count samples each).
    """
    hb, wb = sumsq.shape
    if not 1 <= budget <= hb * wb:
        raise ValueError(f"adaptive_regions: budget {budget} outside [1, {hb * wb}] for a {hb}x{wb} block grid")
    s1, s2 = _sat(sums.cpu()).numpy(), _sat(sumsq.cpu()).numpy()

    def sse(r0: int, c0: int, r1: int, c1: int) -> float:
        tot = s1[r1, c1] - s1[r0, c1] - s1[r1, c0] + s1[r0, c0]
        sq = s2[r1, c1] - s2[r0, c1] - s2[r1, c0] + s2[r0, c0]
        v = float(sq - (tot * tot).sum() / (count * (r1 - r0) * (c1 - c0)))
        return v if v > 1e-9 * float(sq) else 0.0  # rounding noise of a flat cell is not detail

    done: list[tuple[int, int, int, int]] = []
    heap: list[tuple[float, int, int, int, int, int]] = []

    def push(cell: tuple[int, int, int, int]) -> None:
        r0, c0, r1, c1 = cell
        if (r1 - r0) * (c1 - c0) == 1:
            done.append(cell)
        else:
            heapq.heappush(heap, (-sse(*cell), -(r1 - r0) * (c1 - c0), r0, c0, r1, c1))

    push((0, 0, hb, wb))
    while len(done) + len(heap) < budget:
        _, _, r0, c0, r1, c1 = heapq.heappop(heap)
        if r1 - r0 >= c1 - c0:
            m = r0 + (r1 - r0) // 2
            push((r0, c0, m, c1))
            push((m, c0, r1, c1))
        else:
            m = c0 + (c1 - c0) // 2
            push((r0, c0, r1, m))
            push((r0, m, r1, c1))
    cells = done + [cell[2:] for cell in heap]
    return torch.tensor(sorted(cells), dtype=torch.long)
