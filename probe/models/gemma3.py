"""Gemma 3: SigLIP → average-pool + linear projector → Gemma 3 decoder whose image tokens attend bidirectionally."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import ModelAdapter, ModelInputs, standard_components, standard_sites
from probe.models.layout import VisualLayout, grid_layout
from probe.models.registry import register_adapter
from probe.segments import Segment


@register_adapter
class Gemma3Adapter(ModelAdapter):
    """`<start_of_image>` + `<image_soft_token>`×mm_tokens_per_image + `<end_of_image>`, one squashed view per image.

    The model needs `token_type_ids` (1 at image tokens) to let each image's tokens see each other
    bidirectionally; the adapter derives them from the segments, so padding never counts as image.
    Pan-and-scan crops are not supported (off in the published preprocessor configs).
    """

    name = "gemma3"
    model_types = ("gemma3",)
    sites = standard_sites("model.vision_tower", "model.multi_modal_projector", "model.language_model.layers")
    components = standard_components("model.vision_tower", "model.multi_modal_projector", "model.language_model")

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)

    @property
    def tokens_per_image(self) -> int:
        return int(self.model.config.mm_tokens_per_image)

    def visual_tiles(self, batch: ModelInputs) -> list[int]:
        return [n // self.tokens_per_image for n in self.n_visual_tokens(batch.segments).tolist()]

    def rows_per_tile(self) -> dict[str, int]:
        vision = self.model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2  # SigLIP: no CLS row
        return {"vision.out": patches, "projector.in": patches, "projector.out": self.tokens_per_image}

    def visual_layout(self, batch: ModelInputs) -> list[VisualLayout]:
        """One view, the whole image squashed to a square: the pooled token grid row-major over it."""
        side = math.isqrt(self.tokens_per_image)
        out = []
        for b, tiles in enumerate(self.visual_tiles(batch)):
            if tiles != 1:
                raise ValueError(f"adapter {self.name!r}: example {b} has {tiles} views of image tokens; "
                                 "pan-and-scan crops are not supported")
            height, width = batch.image_size(b)
            out.append(grid_layout(0, (0.0, 0.0, float(width), float(height)), side, side, (height, width)))
        return out

    def _roles(self) -> dict[int, Segment]:
        cfg = self.model.config
        return {self.image_token_id: Segment.VISUAL, int(cfg.boi_token_index): Segment.IMAGE_START,
                int(cfg.eoi_token_index): Segment.IMAGE_END}

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        roles = self._roles()
        # the processor's placeholder is <start_of_image>, which it expands to the full image sequence
        placeholder = self.processor.image_token
        enc = encode_examples(self.processor, examples, self.image_token_id,
                              text=lambda ex: prompt_text(self.processor, ex, placeholder),
                              segments=lambda ids: segments_from_ids(ids, roles), placeholder=placeholder)
        extra = {"pixel_values": torch.cat([f["pixel_values"] for f in enc.features])}
        batch = assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)
        # which positions form the bidirectional image blocks (the processor's token_type_ids, padded)
        batch.inputs["token_type_ids"] = (batch.segments == int(Segment.VISUAL)).long()
        return batch
