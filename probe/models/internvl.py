"""InternVL family (InternVL2.5/3, HF-native): InternViT → pixel-unshuffle MLP → Qwen2/Llama decoder."""

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
class InternVLAdapter(ModelAdapter):
    """`<img>` + `<IMG_CONTEXT>`×(tiles·tokens) + `</img>`; every tile is a separate pixel_values row."""

    name = "internvl"
    model_types = ("internvl",)
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
        return int(self.model.config.image_token_id)

    def _roles(self) -> dict[int, Segment]:
        tok = self.processor.tokenizer
        return {
            self.image_token_id: Segment.VISUAL,
            tok.convert_tokens_to_ids(self.processor.start_image_token): Segment.IMAGE_START,
            tok.convert_tokens_to_ids(self.processor.end_image_token): Segment.IMAGE_END,
        }

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        tokenizer = self.processor.tokenizer
        placeholder = self.processor.image_token
        roles = self._roles()
        prompts, segments, answers, pixels = [], [], [], []
        for ex in examples:
            image = load_image(ex)
            text = prompt_text(self.processor, ex, placeholder)
            try:
                enc = self.processor(images=[image], text=[text], return_tensors="pt")
            except ValueError as err:
                raise BadExampleError(ex.id, f"processor refused the input: {str(err).splitlines()[0]}") from None
            ids = enc["input_ids"][0].tolist()
            if self.image_token_id not in ids:
                raise BadExampleError(ex.id, "no image tokens after processing")
            prompts.append(ids)
            segments.append(segments_from_ids(ids, roles))
            answers.append(answer_ids(tokenizer, ex.answer))
            pixels.append(enc["pixel_values"])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # tiles of all examples in order: the model scatters them into the image tokens row by row
        batch = assemble(examples, prompts, segments, answers, pad, padding_side, {"pixel_values": torch.cat(pixels)})
        mask = batch.inputs["attention_mask"]
        # positions count real tokens only, so left and right padding give the same RoPE phases
        batch.inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
        return batch
