"""InternVL family (InternVL2.5/3, HF-native): InternViT → pixel-unshuffle MLP → Qwen2/Llama decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import ModelAdapter, ModelInputs, standard_components, standard_sites
from probe.models.registry import register_adapter
from probe.segments import Segment


@register_adapter
class InternVLAdapter(ModelAdapter):
    """`<img>` + `<IMG_CONTEXT>`×(tiles·tokens) + `</img>`; every tile is a separate pixel_values row."""

    name = "internvl"
    model_types = ("internvl",)
    sites = standard_sites("model.vision_tower", "model.multi_modal_projector", "model.language_model.layers")
    components = standard_components("model.vision_tower", "model.multi_modal_projector", "model.language_model")

    def visual_units(self, batch: ModelInputs) -> list[int]:
        """Tiles per example: the vision tower sees each tile (with its CLS token) on its own."""
        per_tile = getattr(self.processor, "image_seq_length", None)
        if not per_tile:  # a processor that does not say: InternVL's pixel-unshuffle count
            vcfg = self.model.config.vision_config
            side = [s // p for s, p in zip(_pair(vcfg.image_size), _pair(vcfg.patch_size))]
            per_tile = round(side[0] * side[1] * self.model.config.downsample_ratio ** 2)
        return [n // int(per_tile) for n in self.n_visual_tokens(batch.segments).tolist()]

    def _roles(self) -> dict[int, Segment]:
        tok = self.processor.tokenizer
        return {
            self.image_token_id: Segment.VISUAL,
            tok.convert_tokens_to_ids(self.processor.start_image_token): Segment.IMAGE_START,
            tok.convert_tokens_to_ids(self.processor.end_image_token): Segment.IMAGE_END,
        }

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        roles = self._roles()
        enc = encode_examples(
            self.processor, examples, self.image_token_id,
            text=lambda ex: prompt_text(self.processor, ex, self.processor.image_token),
            segments=lambda ids: segments_from_ids(ids, roles),
        )
        # tiles of all examples in order: the model scatters them into the image tokens row by row
        extra = {"pixel_values": torch.cat([f["pixel_values"] for f in enc.features])}
        return assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
