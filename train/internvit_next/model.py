"""InternViT-Next: an InternVL vision tower with window attention, 2-D RoPE and native resolution."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .attention import window_attention
from .config import InternViTNextConfig
from .rope2d import apply_rope2d, rope2d_angles


@dataclass
class InternViTNextOutput(BaseModelOutputWithPooling):
    """Vision-tower output; grid_hw holds each image's (rows, cols) of patches."""

    grid_hw: list[tuple[int, int]] | None = None


class InternViTNext(nn.Module):
    """Drop-in vision tower built from an InternVLVisionModel's modules (weights shared/copied)."""

    def __init__(self, hf_vision: nn.Module, cfg: InternViTNextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.config = hf_vision.config
        self.embeddings = hf_vision.embeddings
        self.encoder = hf_vision.encoder
        self.layernorm = hf_vision.layernorm
        if not cfg.keep_abs_pos:
            self.embeddings.position_embeddings = None
        p = self.config.patch_size
        self.patch = p[0] if isinstance(p, (list, tuple)) else p

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (InternVL casts pixels to it)."""
        return self.embeddings.cls_token.dtype

    def _pos(self, h: int, w: int) -> torch.Tensor | None:
        pe = self.embeddings.position_embeddings
        if pe is None:
            return None
        n = pe.shape[1] - 1
        side = math.isqrt(n)
        if h * w == n and h == w:
            return pe
        grid = pe[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def _attn(self, attn: nn.Module, x: torch.Tensor, h: int, w: int, windowed: bool,
              angles: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        nh, hd = attn.num_heads, attn.head_dim
        q = attn.q_norm(attn.q_proj(x)).reshape(b, n, nh, hd).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x)).reshape(b, n, nh, hd).transpose(1, 2)
        v = attn.v_proj(x).reshape(b, n, nh, hd).transpose(1, 2)
        if angles is not None:  # cls token (index 0) keeps angle 0
            q = torch.cat([q[:, :, :1], apply_rope2d(q[:, :, 1:], angles)], dim=2)
            k = torch.cat([k[:, :, :1], apply_rope2d(k[:, :, 1:], angles)], dim=2)
        if windowed:
            # cls query stays global (O(N)); patch queries see only their k x k window
            cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v, scale=attn.scale)
            patch_out = window_attention(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], h, w, self.cfg.window,
                                         attn.scale)
            out = torch.cat([cls_out, patch_out], dim=2)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, n, nh * hd)
        return attn.projection_dropout(attn.projection_layer(out))

    def _encode(self, pixel_values: torch.Tensor, output_hidden_states: bool):
        _, _, H, W = pixel_values.shape
        if H % self.patch or W % self.patch:
            raise ValueError(f"InternViTNext: image {H}x{W} is not a multiple of patch {self.patch}")
        h, w = H // self.patch, W // self.patch
        if not self.cfg.native_resolution and h != w:
            raise ValueError(f"InternViTNext {self.cfg.name}: non-square {H}x{W} needs native_resolution")
        emb = self.embeddings.patch_embeddings(pixel_values)
        x = torch.cat([self.embeddings.cls_token.expand(emb.shape[0], -1, -1), emb], dim=1)
        pos = self._pos(h, w)
        if pos is not None:
            x = x + pos
        x = self.embeddings.dropout(x)
        angles = None
        if self.cfg.rope2d:
            angles = rope2d_angles(h, w, self.encoder.layer[0].attention.head_dim).to(x.device)
        hidden = [x] if output_hidden_states else None
        L = len(self.encoder.layer)
        for i, layer in enumerate(self.encoder.layer):
            a = self._attn(layer.attention, layer.layernorm_before(x), h, w, self.cfg.is_window_layer(i, L), angles)
            x = x + layer.lambda_1 * a
            y = layer.dropout(layer.mlp(layer.layernorm_after(x)))
            x = x + (layer.lambda_2 * y if layer.lambda_2 is not None else y)
            if hidden is not None:
                hidden.append(x)
        return self.layernorm(x), hidden, (h, w)

    def forward(self, pixel_values: torch.Tensor | list[torch.Tensor], output_hidden_states: bool | None = None,
                return_dict: bool = True, **kwargs) -> InternViTNextOutput:
        """Encode a (B,C,H,W) batch or a list of (C,H,W) images of different sizes (padded output)."""
        if isinstance(pixel_values, torch.Tensor):
            last, hidden, hw = self._encode(pixel_values, bool(output_hidden_states))
            return InternViTNextOutput(last_hidden_state=last, hidden_states=tuple(hidden) if hidden else None,
                                       grid_hw=[hw] * pixel_values.shape[0])
        outs = [self._encode(p[None], False) for p in pixel_values]
        lens = [o[0].shape[1] for o in outs]
        last = torch.zeros(len(outs), max(lens), outs[0][0].shape[-1], dtype=outs[0][0].dtype)
        for i, o in enumerate(outs):
            last[i, : lens[i]] = o[0][0]
        return InternViTNextOutput(last_hidden_state=last, grid_hw=[o[2] for o in outs])


def num_image_tokens(height: int, width: int, patch_size: int, downsample_ratio: float = 0.5) -> int:
    """Number of <image> tokens InternVL's LM sees for an H x W image (after pixel shuffle)."""
    if height % patch_size or width % patch_size:
        raise ValueError(f"num_image_tokens: {height}x{width} not a multiple of patch {patch_size}")
    s = round(1 / downsample_ratio)
    h, w = height // patch_size, width // patch_size
    if h % s or w % s:
        raise ValueError(f"num_image_tokens: grid {h}x{w} not divisible by pixel-shuffle factor {s}")
    return (h // s) * (w // s)
