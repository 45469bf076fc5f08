"""LLaVA family: LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision (VARCO-VISION-2.0) share this adapter.

LLaVA-NeXT and LLaVA-OneVision ("anyres") cut an image into a base tile plus a grid of tiles. The `<image>` run
holds the base tile's patches, then the unpadded grid's patches row by row (bilinearly shrunk first by OneVision's
`vision_aspect_ratio` when large), each row closed by the learned `image_newline` embedding. The newline positions
carry an image-token id but no image content: they are IMAGE_SEP, the patch positions VISUAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import BadExampleError, ModelAdapter, ModelInputs, standard_components, standard_sites
from probe.models.registry import register_adapter
from probe.segments import Segment


@register_adapter
class LlavaAdapter(ModelAdapter):
    """Vision tower → multi-modal projector → decoder; `<image>` tokens are replaced by projected patches."""

    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision")
    sites = standard_sites("model.vision_tower", "model.multi_modal_projector", "model.language_model.layers")
    components = standard_components("model.vision_tower", "model.multi_modal_projector", "model.language_model")

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        if hasattr(self.base_model.model, "image_newline"):  # anyres: the learned row-end embedding
            self.components = {**type(self).components, "image_newline": "model.image_newline"}

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
        if getattr(self.model.config, "image_grid_pinpoints", None):  # anyres: LLaVA-NeXT, LLaVA-OneVision
            for ex, ids, segs, feature in zip(examples, enc.prompts, enc.segments, enc.features):
                for i in self._newline_positions(ex, ids, feature):
                    segs[i] = int(Segment.IMAGE_SEP)
        return assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)

    def visual_units(self, batch: ModelInputs) -> list[int]:
        """Tiles per example for anyres models (their projector rows are tiles × patches); visual tokens otherwise."""
        if not getattr(self.model.config, "image_grid_pinpoints", None):
            return super().visual_units(batch)
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = self.model.config
        return [image_size_to_num_patches(image_size=tuple(int(v) for v in size), grid_pinpoints=cfg.image_grid_pinpoints,
                                          patch_size=cfg.vision_config.image_size)
                for size in batch.inputs["image_sizes"]]

    def _newline_positions(self, example: Example, ids: list[int], feature: Any) -> list[int]:
        """Prompt positions of an anyres image's `image_newline` embeddings (one closing each row of the tile grid).

        The grid's size after unpadding (and OneVision's shrinking) is the processor's own count, so the layout
        always agrees with the number of `<image>` tokens it emitted.
        """
        from transformers.image_processing_utils import select_best_resolution

        span = [i for i, t in enumerate(ids) if t == self.image_token_id]
        height, width = (int(v) for v in feature["image_sizes"][0])
        tile = int(feature["pixel_values"].shape[-1])
        best_h, best_w = select_best_resolution([height, width], self.processor.image_processor.image_grid_pinpoints)
        vision = self.model.config.vision_config
        patches = vision.image_size // vision.patch_size
        n_grid, rows = self.processor._get_unpadded_features(height, width, patches, patches, best_h // tile, best_w // tile)
        cols, uneven = divmod(n_grid, rows)
        base = len(span) - rows * (cols + 1)
        if uneven or base <= 0 or span[-1] - span[0] + 1 != len(span):
            raise BadExampleError(example.id, f"{len(span)} image tokens do not fit a {rows}x{cols} anyres grid")
        return [span[base + r * (cols + 1) + cols] for r in range(rows)]


def _cat_padded(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-example pixel tensors; LLaVA-NeXT's patch counts may differ, so pad with zeros."""
    if all(p.shape[1:] == pixels[0].shape[1:] for p in pixels):
        return torch.cat(pixels)
    width = max(p.shape[1] for p in pixels)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in pixels])
