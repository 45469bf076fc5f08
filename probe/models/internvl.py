"""InternVL family (InternVL2.5/3, HF-native): InternViT → pixel-unshuffle MLP → Qwen2/Llama decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import ModelAdapter, ModelInputs, standard_components, standard_sites
from probe.models.layout import VisualLayout, grid_layout, grid_tiles
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
        return self.visual_tiles(batch)

    @property
    def tokens_per_tile(self) -> int:
        """Visual tokens per tile after pixel-unshuffle."""
        per_tile = getattr(self.processor, "image_seq_length", None)
        if not per_tile:  # a processor that does not say: InternVL's pixel-unshuffle count
            side = self._patch_grid()
            per_tile = round(side[0] * side[1] * self.model.config.downsample_ratio ** 2)
        return int(per_tile)

    def _patch_grid(self) -> tuple[int, int]:
        vcfg = self.model.config.vision_config
        return tuple(s // p for s, p in zip(_pair(vcfg.image_size), _pair(vcfg.patch_size)))

    def visual_tiles(self, batch: ModelInputs) -> list[int]:
        return [n // self.tokens_per_tile for n in self.n_visual_tokens(batch.segments).tolist()]

    def rows_per_tile(self) -> dict[str, int]:
        """InternViT emits a CLS row before the patches; the projector sees the pixel-unshuffled patches only."""
        rows, cols = self._patch_grid()
        return {"vision.out": rows * cols + 1, "projector.in": self.tokens_per_tile, "projector.out": self.tokens_per_tile}

    def visual_layout(self, batch: ModelInputs) -> list[VisualLayout]:
        """Tiles row-major over the image stretched onto the processor's tile grid, then the thumbnail (whole image)."""
        side = math.isqrt(self.tokens_per_tile)
        out = []
        for b, n_tiles in enumerate(self.visual_tiles(batch)):
            size = batch.image_size(b)
            boxes = self._tile_boxes(size)
            if len(boxes) != n_tiles:
                raise ValueError(f"adapter {self.name!r}: example {b} has {n_tiles} tiles of image tokens, the processor's "
                                 f"grid for a {size[0]}x{size[1]} image {len(boxes)}")
            out.append(VisualLayout.concat([grid_layout(t, box, side, side, size) for t, box in enumerate(boxes)]))
        return out

    def _tile_boxes(self, image_size: tuple[int, int]) -> list[tuple[float, float, float, float]]:
        ip = self.processor.image_processor
        whole = (0.0, 0.0, float(image_size[1]), float(image_size[0]))
        if not (getattr(ip, "crop_to_patches", False) and ip.max_patches > 1):
            return [whole]
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        cols, rows = get_optimal_tiled_canvas(image_size, (ip.size["height"], ip.size["width"]), ip.min_patches, ip.max_patches)
        tiles = grid_tiles(rows, cols, image_size)
        return tiles + [whole] if len(tiles) > 1 else tiles  # the thumbnail follows a real tiling

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
            segments=lambda ids: segments_from_ids(ids, roles), placeholder=self.processor.image_token,
        )
        # tiles of all examples in order: the model scatters them into the image tokens row by row
        extra = {"pixel_values": torch.cat([f["pixel_values"] for f in enc.features])}
        return assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
