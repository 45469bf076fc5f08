"""Window / full attention over one image's patch grid via SDPA (per-window batching)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, h: int, w: int, k: int) -> tuple[torch.Tensor, int, int]:
    """(B, H, h*w, D) -> (B*nW, H, k*k, D) after zero-padding the grid to multiples of k."""
    b, nh, _, d = x.shape
    ph, pw = -h % k, -w % k
    g = x.reshape(b, nh, h, w, d)
    g = F.pad(g, (0, 0, 0, pw, 0, ph))
    hh, ww = (h + ph) // k, (w + pw) // k
    g = g.reshape(b, nh, hh, k, ww, k, d).permute(0, 2, 4, 1, 3, 5, 6)
    return g.reshape(b * hh * ww, nh, k * k, d), hh, ww


def window_unpartition(x: torch.Tensor, b: int, h: int, w: int, k: int, hh: int, ww: int) -> torch.Tensor:
    """Inverse of window_partition, dropping padding."""
    nh, d = x.shape[1], x.shape[-1]
    g = x.reshape(b, hh, ww, nh, k, k, d).permute(0, 3, 1, 4, 2, 5, 6)
    return g.reshape(b, nh, hh * k, ww * k, d)[:, :, :h, :w].reshape(b, nh, h * w, d)


def window_valid_mask(h: int, w: int, k: int) -> torch.Tensor:
    """(nW, 1, 1, k*k) bool mask of real (non-padding) keys per window."""
    valid = torch.ones(1, 1, h * w, 1)
    vw, _, _ = window_partition(valid, h, w, k)
    return vw[..., 0].bool()[:, :, None, :]


def window_attention(q: torch.Tensor, k_: torch.Tensor, v: torch.Tensor, h: int, w: int, k: int,
                     scale: float) -> torch.Tensor:
    """Attention restricted to k x k windows of an h x w grid; q/k/v are (B, H, h*w, D)."""
    b = q.shape[0]
    qw, hh, ww = window_partition(q, h, w, k)
    kw, _, _ = window_partition(k_, h, w, k)
    vw, _, _ = window_partition(v, h, w, k)
    mask = window_valid_mask(h, w, k).to(q.device).repeat(b, 1, 1, 1)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale)
    return window_unpartition(out, b, h, w, k, hh, ww)


def dense_window_reference(q: torch.Tensor, k_: torch.Tensor, v: torch.Tensor, h: int, w: int, k: int,
                           scale: float) -> torch.Tensor:
    """O(N^2) masked reference for tests: token i sees j iff same window."""
    r = torch.arange(h).repeat_interleave(w) // k
    c = torch.arange(w).repeat(h) // k
    wid = r * ((w + k - 1) // k) + c
    mask = wid[:, None] == wid[None, :]
    s = (q @ k_.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v
