"""LLaVA family: LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision (VARCO-VISION-2.0) share this adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import ModelAdapter, ModelInputs
from probe.models.registry import register_adapter
from probe.segments import Segment


@register_adapter
class LlavaAdapter(ModelAdapter):
    """Vision tower → multi-modal projector → decoder; `<image>` tokens are replaced by projected patches."""

    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision")
    sites = {
        "vision.out": "model.vision_tower",
        "projector.in": "model.multi_modal_projector",
        "projector.out": "model.multi_modal_projector",
        "lm.layer.{i}.resid": "model.language_model.layers.{i}",
        "lm.layer.{i}.attn": "model.language_model.layers.{i}.self_attn",
    }

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.get_submodule("model.language_model.layers")

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        placeholder = getattr(self.processor, "image_token", "<image>")
        enc = encode_examples(
            self.processor, examples, self.image_token_id,
            text=lambda ex: prompt_text(self.processor, ex, placeholder),
            segments=lambda ids: segments_from_ids(ids, {self.image_token_id: Segment.VISUAL}),
        )
        extra = {"pixel_values": _cat_padded([f["pixel_values"] for f in enc.features])}
        if "image_sizes" in enc.features[0]:
            extra["image_sizes"] = torch.cat([f["image_sizes"] for f in enc.features])
        return assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)


def _cat_padded(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-example pixel tensors; LLaVA-NeXT's patch counts may differ, so pad with zeros."""
    if all(p.shape[1:] == pixels[0].shape[1:] for p in pixels):
        return torch.cat(pixels)
    width = max(p.shape[1] for p in pixels)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in pixels])
