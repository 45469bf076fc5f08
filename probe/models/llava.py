"""LLaVA family: LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision (VARCO-VISION-2.0) share this adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from probe.data.example import Example
from probe.models._inputs import answer_ids, assemble, load_image, prompt_text, segments_from_ids
from probe.models.base import BadExampleError, ModelAdapter, ModelInputs
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
        tokenizer = self.processor.tokenizer
        placeholder = getattr(self.processor, "image_token", "<image>")
        prompts, segments, answers, pixels, sizes = [], [], [], [], []
        for ex in examples:
            image = load_image(ex)
            text = prompt_text(self.processor, ex, placeholder)
            try:
                enc = self.processor(images=[image], text=[text], return_tensors="pt")
            except ValueError as err:
                raise BadExampleError(ex.id, f"processor refused the input: {str(err).splitlines()[0]}") from None
            ids = enc["input_ids"][0].tolist()
            n_image = sum(1 for t in ids if t == self.image_token_id)
            if n_image == 0:
                raise BadExampleError(ex.id, "no image tokens after processing")
            prompts.append(ids)
            segments.append(segments_from_ids(ids, {self.image_token_id: Segment.VISUAL}))
            answers.append(answer_ids(tokenizer, ex.answer))
            pixels.append(enc["pixel_values"])
            if "image_sizes" in enc:
                sizes.append(enc["image_sizes"])
        extra = {"pixel_values": _cat_padded(pixels)}
        if sizes:
            extra["image_sizes"] = torch.cat(sizes)
        batch = assemble(examples, prompts, segments, answers, _pad_id(tokenizer), padding_side, extra)
        mask = batch.inputs["attention_mask"]
        # positions count real tokens only, so left and right padding give the same RoPE phases
        batch.inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
        return batch


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _cat_padded(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-example pixel tensors; LLaVA-NeXT's patch counts may differ, so pad with zeros."""
    if all(p.shape[1:] == pixels[0].shape[1:] for p in pixels):
        return torch.cat(pixels)
    width = max(p.shape[1] for p in pixels)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in pixels])
