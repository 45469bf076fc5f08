"""2-D rotary position embedding over (row, col) patch coordinates."""
from __future__ import annotations

import torch


def rope2d_angles(h: int, w: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles (h*w, head_dim/2): first half of the pairs rotate by row, second half by column."""
    if head_dim % 4:
        raise ValueError(f"rope2d: head_dim must be divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    return torch.cat([rows[:, None] * inv, cols[:, None] * inv], dim=-1)


def apply_rope2d(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., N, head_dim) by angles (N, head_dim/2), rotate-half convention."""
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], -1) * sin
