"""InternViT-Next: InternVL's vision tower run natively on packed variable-size images.

Reuses the modules (and so every weight) of a transformers `InternVLVisionModel`; re-implements only the
forward: packed sequences (native resolution, no tiling), optional 2-D RoPE on q/k, window attention in all
layers but `full_layers`, all through SDPA. With A0 options the computation is InternVL's (InternVL 2.5/3
reports; transformers `InternVLVisionModel`), which the tests check to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .attention import Groups, PackPlan, grouped_attention, pack_plan
from .config import InternViTNextConfig
from .layout import TokenLayout
from .rope2d import apply_rope2d, packed_rope
from .tokens import VisualTokenizer


@dataclass
class InternViTNextOutput(BaseModelOutputWithPooling):
    """Tower output. last_hidden_state / hidden_states: [images, max(1 + h*w), D], zero-padded per image.

    grid_hw: each image's patch grid (rows, cols); layouts: per image, the LM-side TokenLayout (set by the
    InternVL integration, which also puts the projected visual tokens in pooler_output).
    """

    grid_hw: list[tuple[int, int]] | None = None
    layouts: list[TokenLayout] | None = None


def as_image_list(pixel_values: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[B, C, H, W] tensor or a sequence of [C, H, W] images -> list of [C, H, W]."""
    if isinstance(pixel_values, torch.Tensor):
        if pixel_values.ndim != 4:
            raise ValueError(f"InternViTNext: pixel_values must be [B, C, H, W], got {tuple(pixel_values.shape)}")
        return list(pixel_values.unbind(0))
    images = list(pixel_values)
    if not images or any(im.ndim != 3 for im in images):
        raise ValueError("InternViTNext: a list of pixel_values must hold [C, H, W] images (at least one)")
    return images


class InternViTNext(nn.Module):
    """Drop-in vision tower for InternVLForConditionalGeneration (see `vlm.swap_vision_tower`)."""

    def __init__(self, hf_vision: nn.Module, cfg: InternViTNextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.config = hf_vision.config
        self.embeddings = hf_vision.embeddings
        self.encoder = hf_vision.encoder
        self.layernorm = hf_vision.layernorm
        if not cfg.abs_pos:
            self.embeddings.position_embeddings = None
        p = self.config.patch_size
        self.patch_size = int(p[0] if isinstance(p, (list, tuple)) else p)
        attn = self.encoder.layer[0].attention
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        if cfg.rope2d and self.head_dim % 4:
            raise ValueError(f"InternViTNext {cfg.name}: 2-D RoPE needs head_dim % 4 == 0, got {self.head_dim}")
        self.tokenizer = VisualTokenizer(cfg, self.config.hidden_size, self.patch_size)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (InternVL casts pixels to it)."""
        return self.embeddings.cls_token.dtype

    def grid_of(self, image: torch.Tensor) -> tuple[int, int]:
        """Patch grid (rows, cols) of a [C, H, W] image; raises when H or W is not a multiple of the patch."""
        _, hh, ww = image.shape
        if hh % self.patch_size or ww % self.patch_size:
            raise ValueError(f"InternViTNext: image {hh}x{ww} is not a multiple of patch {self.patch_size}")
        return hh // self.patch_size, ww // self.patch_size

    def _embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Packed [sum(1 + h*w), D]: CLS + patch embeddings (+ interpolated abs positions) per image."""
        if len({tuple(im.shape) for im in images}) == 1:  # one batched call when all sizes agree
            return self.embeddings(torch.stack(images)).flatten(0, 1)
        return torch.cat([self.embeddings(im[None])[0] for im in images])

    def _attention(self, attn: nn.Module, x: torch.Tensor, groups: Sequence[Groups],
                   rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        t = x.shape[0]
        q = attn.q_norm(attn.q_proj(x)).view(t, self.num_heads, self.head_dim)
        k = attn.k_norm(attn.k_proj(x)).view(t, self.num_heads, self.head_dim)
        v = attn.v_proj(x).view(t, self.num_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope2d(q, *rope), apply_rope2d(k, *rope)
        p = attn.attention_dropout if self.training else 0.0
        out = grouped_attention(q, k, v, groups, attn.scale, p).reshape(t, -1)
        return attn.projection_dropout(attn.projection_layer(out))

    def _layer(self, layer: nn.Module, x: torch.Tensor, groups: Sequence[Groups],
               rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """One InternVLVisionLayer (pre-norm, layer scale lambda_1/lambda_2) with our attention."""
        x = x + layer.lambda_1 * self._attention(layer.attention, layer.layernorm_before(x), groups, rope)
        y = layer.dropout(layer.mlp(layer.layernorm_after(x)))
        return x + (layer.lambda_2 * y if layer.lambda_2 is not None else y)

    def encode(self, images: list[torch.Tensor], output_hidden_states: bool = False
               ) -> tuple[torch.Tensor, list[torch.Tensor], PackPlan]:
        """Packed final features [T, D] (after the last layernorm), packed hidden states, the pack plan."""
        images = [im.to(self.dtype) for im in images]
        plan = pack_plan([self.grid_of(im) for im in images], self.cfg.window, images[0].device)
        x = self._embed(images)
        rope = packed_rope(plan.grids, self.head_dim, self.cfg.rope_theta, x.device) if self.cfg.rope2d else None
        hidden = [x] if output_hidden_states else []
        n = len(self.encoder.layer)
        for i, layer in enumerate(self.encoder.layer):
            groups = plan.window if self.cfg.window_layer(i, n) else (plan.full,)
            x = self._layer(layer, x, groups, rope)
            if output_hidden_states:
                hidden.append(x)
        return self.layernorm(x), hidden, plan

    def forward(self, pixel_values: torch.Tensor | Sequence[torch.Tensor], output_hidden_states: bool | None = None,
                return_dict: bool = True, **kwargs: object) -> InternViTNextOutput:
        """Encode [B, C, H, W] or a list of [C, H, W] images of any sizes (multiples of the patch) in one pass."""
        last, hidden, plan = self.encode(as_image_list(pixel_values), bool(output_hidden_states))
        return InternViTNextOutput(last_hidden_state=plan.pad(last),
                                   hidden_states=tuple(plan.pad(h) for h in hidden) if hidden else None,
                                   grid_hw=list(plan.grids))

    def patch_grids(self, features: torch.Tensor, grids: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Padded features [images, L, D] (CLS first) -> per image [h, w, D] patch grids."""
        return [features[i, 1:1 + h * w].reshape(h, w, -1) for i, (h, w) in enumerate(grids)]
