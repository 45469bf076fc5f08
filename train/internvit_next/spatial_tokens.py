"""LLaVA-SP-style extra spatial tokens from the 2-D patch-feature map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialTokens(nn.Module):
    """Option A: n conv kernels (growing receptive field) over the (B,D,h,w) map, each pooled to one token."""

    def __init__(self, dim: int, n: int = 6) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"SpatialTokens: n must be >= 1, got {n}")
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, 2 * i + 1, padding=i) for i in range(n))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, n, D)."""
        return torch.stack([c(grid).mean(dim=(2, 3)) for c in self.convs], dim=1)


def multiscale_pooled_tokens(grid: torch.Tensor, scales: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """Option B: adaptive average pooling at each scale s (s*s tokens each); (B,D,h,w) -> (B, sum s^2, D)."""
    return torch.cat([F.adaptive_avg_pool2d(grid, s).flatten(2).transpose(1, 2) for s in scales], dim=1)
