"""Put InternViT-Next into transformers' InternVLForConditionalGeneration, and agree on image-token counts.

`swap_vision_tower` replaces the adapter's `vision` component and routes that one model's image features
(`ModelAdapter.replace_image_features`): tower -> VisualTokenizer -> the model's own `multi_modal_projector`. For A0..A2 on
square tiles this is InternVL's computation (pixel unshuffle in the same channel order); variants with
spatial tokens or compression change the token count, which `image_token_count` / `configure_processor` /
`expand_image_tokens` give to the prompt side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import InternViTNextConfig
from .convert import convert_vision_model
from .encoder import InternViTNext, InternViTNextOutput, as_image_list
from .tokens import tokens_per_image


def _patch(config: object) -> int:
    p = config.patch_size
    return int(p[0] if isinstance(p, (list, tuple)) else p)


def image_token_count(cfg: InternViTNextConfig, height: int, width: int, patch_size: int) -> int:
    """Image tokens the LM sees for one height x width image (sides multiples of 2 * patch_size)."""
    if height % (2 * patch_size) or width % (2 * patch_size):
        raise ValueError(f"image_token_count: {height}x{width} not a multiple of 2*patch = {2 * patch_size}")
    return tokens_per_image(cfg, height // patch_size, width // patch_size)


def _image_features(adapter: object) -> object:
    """InternVLModel.get_image_features for an InternViTNext tower: tower -> VisualTokenizer -> the adapter's projector."""

    def features(inner: nn.Module, pixel_values: torch.Tensor | Sequence[torch.Tensor],
                 vision_feature_layer: int | None = None, vision_feature_select_strategy: str | None = None,
                 **kwargs: object) -> InternViTNextOutput:
        layer = inner.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = inner.config.vision_feature_select_strategy if vision_feature_select_strategy is None \
            else vision_feature_select_strategy
        if strategy != "default" or not isinstance(layer, int):
            raise ValueError(f"InternViT-Next: needs vision_feature_select_strategy='default' (CLS dropped) and one "
                             f"int vision_feature_layer, got {strategy!r}, {layer!r}")
        tower: InternViTNext = adapter.component("vision")
        images = as_image_list(pixel_values)
        out = tower(images, output_hidden_states=layer != -1)
        feats = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        tokens, layouts = tower.tokenizer(tower.patch_grids(feats, out.grid_hw), images)
        proj = adapter.component("projector")(tokens)
        counts = {len(lay) for lay in layouts}
        out.pooler_output = proj.reshape(len(images), -1, proj.shape[-1]) if len(counts) == 1 else proj[None]
        out.layouts = layouts
        return out

    return features


def swap_vision_tower(vlm: nn.Module, cfg: InternViTNextConfig) -> nn.Module:
    """Replace the vision tower of an InternVLForConditionalGeneration in place (through its adapter); returns vlm."""
    from probe.models.registry import UnsupportedModelError, adapter_for

    try:
        adapter = adapter_for(vlm, None)
    except UnsupportedModelError:
        adapter = None
    if adapter is None or adapter.name != "internvl":
        raise TypeError(f"swap_vision_tower: {type(vlm).__name__} is not an InternVL model")
    if round(1 / vlm.config.downsample_ratio) != 2:
        raise ValueError(f"swap_vision_tower: needs downsample_ratio 0.5, got {vlm.config.downsample_ratio}")
    tower = adapter.component("vision")
    if not isinstance(tower, InternViTNext):
        adapter.replace_component("vision", convert_vision_model(tower, cfg))
    adapter.replace_image_features(_image_features(adapter))
    return vlm


def configure_processor(processor: object, cfg: InternViTNextConfig, patch_size: int) -> object:
    """Set an InternVLProcessor's image_seq_length to cfg's token count for its (square) tile size."""
    size = processor.image_processor.size
    height, width = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
    processor.image_seq_length = image_token_count(cfg, height, width, patch_size)
    return processor


def expand_image_tokens(input_ids: Sequence[int], image_token_id: int, counts: Sequence[int]) -> list[int]:
    """Replace the k-th single image placeholder in input_ids by counts[k] image tokens (native resolution)."""
    places = [i for i, t in enumerate(input_ids) if t == image_token_id]
    if len(places) != len(counts):
        raise ValueError(f"expand_image_tokens: {len(places)} placeholders for {len(counts)} images")
    out: list[int] = []
    prev = 0
    for i, n in zip(places, counts):
        out += list(input_ids[prev:i]) + [image_token_id] * n
        prev = i + 1
    return out + list(input_ids[prev:])


def image_token_counts(vlm: nn.Module, images: Sequence[torch.Tensor]) -> list[int]:
    """Image tokens per [C, H, W] image for a model whose tower was swapped."""
    from probe.models.registry import adapter_for

    tower = adapter_for(vlm, None).component("vision")
    if not isinstance(tower, InternViTNext):
        raise TypeError("image_token_counts: the model's vision tower is not InternViTNext (call swap_vision_tower)")
    return [image_token_count(tower.cfg, im.shape[-2], im.shape[-1], _patch(tower.config)) for im in images]
