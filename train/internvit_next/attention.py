"""Attention over a packed sequence of images: full (per image) and k x k window groups, run with SDPA.

The packed sequence holds, image after image, [CLS, patch(0,0), patch(0,1), ...]. A layer's attention is a
set of `Groups`: rows of query indices and rows of key indices into the packed sequence, with a key-padding
mask. Full attention is one row per image (keys: that image only). Window attention (Qwen2.5-VL, window
size in patches) is one row per k x k window over all images at once, plus one row per image for its CLS
query, which stays global (O(N)). Masks are [rows, keys] key-padding masks, never [N, N].

Deliberate difference from Qwen2.5-VL: InternViT has a CLS token; patch queries in a window also see their
image's CLS key (one extra key per window), so CLS keeps acting as the global register it was trained as.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Groups:
    """Index rows into a packed sequence.

    q_idx [G, Lq], q_valid [G, Lq]: query positions (invalid slots are padding, their output is dropped);
    kv_idx [G, Lk], kv_valid [G, Lk] or None (all valid): key/value positions each query row may see.
    """

    q_idx: torch.Tensor
    q_valid: torch.Tensor
    kv_idx: torch.Tensor
    kv_valid: torch.Tensor | None


def _pad_rows(rows: Sequence[torch.Tensor], fill_from: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D index rows of different lengths; padding repeats a valid index, the mask marks it."""
    width = max(len(r) for r in rows)
    idx = torch.stack([torch.cat([r, r.new_full((width - len(r),), f)]) for r, f in zip(rows, fill_from)])
    valid = torch.stack([torch.arange(width) < len(r) for r in rows])
    return idx, valid


@dataclass(frozen=True)
class PackPlan:
    """Where each image sits in the packed sequence and the attention groups of its layers."""

    grids: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    full: Groups
    window: tuple[Groups, ...] | None

    @property
    def total(self) -> int:
        """Packed length (all images, CLS included)."""
        return sum(self.lengths)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Packed [T, D] -> [images, max_len, D], zeros after each image's end."""
        if len(set(self.lengths)) == 1:
            return x.reshape(len(self.lengths), self.lengths[0], -1)
        out = x[self.full.q_idx]
        return out * self.full.q_valid[..., None].to(out.dtype)


def full_groups(offsets: Sequence[int], lengths: Sequence[int]) -> Groups:
    """One row per image: every token sees every token of its own image."""
    rows = [torch.arange(o, o + n) for o, n in zip(offsets, lengths)]
    idx, valid = _pad_rows(rows, offsets)
    return Groups(idx, valid, idx, None if bool(valid.all()) else valid)


def window_groups(grids: Sequence[tuple[int, int]], offsets: Sequence[int], k: int) -> tuple[Groups, Groups]:
    """(CLS rows: global per image, window rows: k x k patches + their image's CLS key)."""
    q_rows, kv_rows, q_ok, kv_ok = [], [], [], []
    for (h, w), o in zip(grids, offsets):
        grid = torch.arange(o + 1, o + 1 + h * w).reshape(h, w)
        ph, pw = -h % k, -w % k
        grid = F.pad(grid, (0, pw, 0, ph), value=-1)
        win = grid.reshape((h + ph) // k, k, (w + pw) // k, k).permute(0, 2, 1, 3).reshape(-1, k * k)
        ok = win >= 0
        win = torch.where(ok, win, torch.full_like(win, o))
        cls = torch.full((win.shape[0], 1), o)
        q_rows.append(win)
        q_ok.append(ok)
        kv_rows.append(torch.cat([cls, win], dim=1))
        kv_ok.append(torch.cat([torch.ones_like(cls, dtype=torch.bool), ok], dim=1))
    kv_valid = torch.cat(kv_ok)
    windows = Groups(torch.cat(q_rows), torch.cat(q_ok), torch.cat(kv_rows), None if bool(kv_valid.all()) else kv_valid)
    lengths = [1 + h * w for h, w in grids]
    full = full_groups(offsets, lengths)
    cls_q = torch.tensor(offsets)[:, None]
    cls = Groups(cls_q, torch.ones_like(cls_q, dtype=torch.bool), full.kv_idx, full.kv_valid)
    return cls, windows


def pack_plan(grids: Sequence[tuple[int, int]], window: int = 0, device: torch.device | None = None) -> PackPlan:
    """Plan for images with the given patch grids (h, w); window > 0 adds the window groups."""
    lengths = [1 + h * w for h, w in grids]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    full = _to(full_groups(offsets, lengths), device)
    win = tuple(_to(g, device) for g in window_groups(grids, offsets, window)) if window else None
    return PackPlan(tuple(grids), tuple(offsets), tuple(lengths), full, win)


def _to(g: Groups, device: torch.device | None) -> Groups:
    if device is None:
        return g
    return Groups(*(t.to(device) if t is not None else None for t in (g.q_idx, g.q_valid, g.kv_idx, g.kv_valid)))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: Sequence[Groups], scale: float,
                      dropout: float = 0.0) -> torch.Tensor:
    """Attention of packed q/k/v [T, heads, head_dim] restricted to `groups`; returns [T, heads, head_dim].

    Every packed position must be a valid query of exactly one group.
    """
    out = torch.zeros_like(q)
    for g in groups:
        qg, kg, vg = (t[i].transpose(1, 2) for t, i in ((q, g.q_idx), (k, g.kv_idx), (v, g.kv_idx)))
        mask = None if g.kv_valid is None else g.kv_valid[:, None, None, :]
        o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, dropout_p=dropout, scale=scale)
        out[g.q_idx[g.q_valid]] = o.transpose(1, 2)[g.q_valid]
    return out
