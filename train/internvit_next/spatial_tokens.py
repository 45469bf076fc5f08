"""LLaVA-SP-style spatial tokens from the 2-D patch-feature map (Lou et al., ICCV 2025, arXiv 2507.00505).

Option A (`SpatialConvTokens`, after LLaVA-SP's SP-Cropping): the map is average-pooled to n x n; token s
(s = 1..n) is one learned convolution whose kernel covers the central s x s crop, so the tokens grow from a
central detail to the whole image. Option B (multi-scale pooling, after SP-Pooling) is parameter-free and
lives in `regions.multiscale_regions` (tokens = means of the pixel-unshuffled blocks of each pooling cell).

Deliberate differences: depthwise kernels plus one shared Linear(D -> 4D) instead of dense convolutions
(parameters grow as n^3 D + 4 D^2, not n^3 * 4 D^2); the output lives in InternVL's pixel-unshuffle space
(4D) so the model's own projector maps it; initialised to mean pooling replicated four times, i.e. the
pixel-unshuffle token of a constant 2x2 block, so fresh tokens start in the projector's input distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .regions import pool_bins


class SpatialConvTokens(nn.Module):
    """n crop-conv tokens of width 4D from an [h, w, D] feature map, with the patch region each covers."""

    def __init__(self, dim: int, n: int = 6) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"SpatialConvTokens: n must be >= 1, got {n}")
        self.n = n
        self.kernels = nn.ParameterList(nn.Parameter(torch.full((dim, s, s), 1.0 / (s * s))) for s in range(1, n + 1))
        self.out = nn.Linear(dim, 4 * dim)
        with torch.no_grad():
            self.out.weight.copy_(torch.eye(dim).repeat(4, 1))
            self.out.bias.zero_()

    def crops(self) -> list[tuple[int, int]]:
        """[start, end) of each central crop in the n x n pooled map."""
        return [((self.n - s) // 2, (self.n - s) // 2 + s) for s in range(1, self.n + 1)]

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[h, w, D] -> tokens [n, 4D], regions [n, 4] in patches (end-exclusive)."""
        h, w, _ = grid.shape
        pooled = F.adaptive_avg_pool2d(grid.permute(2, 0, 1), self.n)
        rows, cols = pool_bins(self.n, h), pool_bins(self.n, w)
        toks, regs = [], []
        for (a, b), kern in zip(self.crops(), self.kernels):
            toks.append((pooled[:, a:b, a:b] * kern).sum((1, 2)))
            regs.append((rows[a][0], cols[a][0], rows[b - 1][1], cols[b - 1][1]))
        return self.out(torch.stack(toks)), torch.tensor(regs, dtype=torch.long)
