"""2-D rotary position embedding over (row, col) patch coordinates, as in Qwen2-VL/2.5-VL's vision encoder.

Follows Qwen2-VL (Wang et al. 2024, sec. 2.1 "2D-RoPE") and transformers' `Qwen2_5_VLVisionRotaryEmbedding`:
inverse frequencies theta^(-i/(d/4)) for i < d/4; the first d/4 rotation pairs turn with the row index,
the next d/4 with the column index; rotate-half convention over the whole head dim.
Deliberate difference: InternViT keeps its CLS token, which gets angle 0 (no rotation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rope2d_angles(h: int, w: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles [h*w, head_dim/2] of a raster-ordered h x w grid: row angles, then column angles."""
    if head_dim % 4:
        raise ValueError(f"rope2d: head_dim must be divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    return torch.cat([rows[:, None] * inv, cols[:, None] * inv], dim=-1)


def packed_rope(grids: Sequence[tuple[int, int]], head_dim: int, theta: float = 10000.0,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [sum(1 + h*w), head_dim] for packed [CLS, patches...] sequences; CLS rows are (1, 0)."""
    parts = []
    for h, w in grids:
        parts += [torch.zeros(1, head_dim // 2, dtype=torch.float64), rope2d_angles(h, w, head_dim, theta)]
    ang = torch.cat(parts).float().to(device)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [tokens, heads, head_dim] by cos/sin [tokens, head_dim] (computed in fp32, cast back)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    out = xf * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]
    return out.to(x.dtype)
