"""Convert a transformers InternVLVisionModel (any size) into an InternViTNext tower."""

from __future__ import annotations

import copy

from torch import nn

from .config import InternViTNextConfig
from .encoder import InternViTNext


def convert_vision_model(hf_vision: nn.Module, cfg: InternViTNextConfig) -> InternViTNext:
    """An InternViTNext holding a deep copy of every weight of hf_vision.

    With cfg.abs_pos the learned position embeddings are kept (and bicubic-interpolated to each image's
    grid at run time, as transformers' `interpolate_pos_encoding`); without, they are dropped in favour of
    2-D RoPE. New modules (spatial-token kernels) start at mean pooling, see `spatial_tokens`.
    """
    if not hasattr(hf_vision, "embeddings") or not hasattr(hf_vision, "encoder"):
        raise TypeError(f"convert_vision_model: expected an InternVLVisionModel, got {type(hf_vision).__name__}")
    return InternViTNext(copy.deepcopy(hf_vision), cfg)
