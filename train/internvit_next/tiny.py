"""Tiny random-weight InternVL vision towers and full models for tests, the benchmark and the experiment."""

from __future__ import annotations

import torch
from transformers import (InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig,
                          InternVLVisionModel, Qwen2Config)


def tiny_vision_config(*, dim: int = 32, layers: int = 3, heads: int = 2, patch: int = 8, image: int = 32,
                       mlp_ratio: int = 2, **kwargs: object) -> InternVLVisionConfig:
    """An InternVLVisionConfig of the given width/depth (qk-norm and layer scale on, to exercise them)."""
    return InternVLVisionConfig(hidden_size=dim, intermediate_size=mlp_ratio * dim, num_hidden_layers=layers,
                                num_attention_heads=heads, image_size=[image, image], patch_size=[patch, patch],
                                **{"use_qk_norm": True, "layer_scale_init_value": 0.5, **kwargs})


def tiny_vision(seed: int = 0, **kwargs: object) -> InternVLVisionModel:
    """Random InternVLVisionModel with non-zero CLS and position embeddings (eval mode, eager attention)."""
    torch.manual_seed(seed)
    model = InternVLVisionModel(tiny_vision_config(**kwargs))
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_(std=0.5)
        model.embeddings.cls_token.normal_()
    return model.eval()


def tiny_internvl_model(seed: int = 0, *, vocab: int = 64, image_token_id: int = 5, text_dim: int = 32,
                        text_layers: int = 1, **vision: object) -> InternVLForConditionalGeneration:
    """Random InternVLForConditionalGeneration (Qwen2 decoder, downsample 0.5) around a tiny vision config."""
    torch.manual_seed(seed)
    text = Qwen2Config(hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=text_layers,
                       num_attention_heads=2, num_key_value_heads=1, vocab_size=vocab)
    cfg = InternVLConfig(vision_config=tiny_vision_config(**vision).to_dict(), text_config=text,
                         image_token_id=image_token_id, downsample_ratio=0.5)
    return InternVLForConditionalGeneration(cfg).eval()
