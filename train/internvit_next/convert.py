"""Convert a transformers InternVLVisionModel (or a full InternVL model) to InternViT-Next."""
from __future__ import annotations

import copy

from torch import nn

from .config import InternViTNextConfig
from .model import InternViTNext


def convert_vision_model(hf_vision: nn.Module, cfg: InternViTNextConfig) -> InternViTNext:
    """Return an InternViTNext carrying a deep copy of every weight of hf_vision."""
    return InternViTNext(copy.deepcopy(hf_vision), cfg)


def swap_vision_tower(vlm: nn.Module, cfg: InternViTNextConfig) -> nn.Module:
    """Replace vlm.model.vision_tower of an InternVLForConditionalGeneration in place; returns vlm."""
    inner = getattr(vlm, "model", vlm)
    if not hasattr(inner, "vision_tower"):
        raise TypeError(f"swap_vision_tower: {type(vlm).__name__} has no vision_tower")
    inner.vision_tower = convert_vision_model(inner.vision_tower, cfg)
    return vlm
