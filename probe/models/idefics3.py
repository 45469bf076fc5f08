"""Idefics3 and SmolVLM: SigLIP → pixel-shuffle + linear connector → Llama decoder, with tiled images."""

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

FAKE = "<fake_token_around_image>"


@register_adapter
class Idefics3Adapter(ModelAdapter):
    """Each tile is `<fake>` + tag (`<row_i_col_j>` or `<global-img>`) + `<image>`×N, closed by a last `<fake>`.

    Segments: `<image>` is VISUAL, the first fake token IMAGE_START, the last IMAGE_END, and everything
    between them that is not an image token (tile tags, inner fake tokens, row newlines) IMAGE_SEP.
    """

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    sites = standard_sites("model.vision_model", "model.connector", "model.text_model.layers")
    components = standard_components("model.vision_model", "model.connector", "model.text_model")

    @property
    def tokens_per_tile(self) -> int:
        """Visual tokens per tile (image_seq_len: the tile's patches after pixel-shuffle)."""
        return int(self.processor.image_seq_len)

    def visual_tiles(self, batch: ModelInputs) -> list[int]:
        """Tiles per example: the split tiles plus the global image (padding tiles never reach the tower)."""
        return [n // self.tokens_per_tile for n in self.n_visual_tokens(batch.segments).tolist()]

    def rows_per_tile(self) -> dict[str, int]:
        vision = self.model.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2  # SigLIP: no CLS row
        return {"vision.out": patches, "projector.in": patches, "projector.out": self.tokens_per_tile}

    def visual_layout(self, batch: ModelInputs) -> list[VisualLayout]:
        """Split tiles row-major over the image stretched onto the tile grid, then the global image (whole image)."""
        side = math.isqrt(self.tokens_per_tile)
        out = []
        for b, n_tiles in enumerate(self.visual_tiles(batch)):
            size = batch.image_size(b)
            _, rows, cols = self.processor.image_processor.get_number_of_image_patches(*size)
            whole = (0.0, 0.0, float(size[1]), float(size[0]))
            boxes = [*grid_tiles(rows, cols, size), whole] if rows * cols else [whole]
            if len(boxes) != n_tiles:
                raise ValueError(f"adapter {self.name!r}: example {b} has {n_tiles} tiles of image tokens, the processor's "
                                 f"split of a {size[0]}x{size[1]} image {len(boxes)}")
            out.append(VisualLayout.concat([grid_layout(t, box, side, side, size) for t, box in enumerate(boxes)]))
        return out

    def _segments(self, ids: list[int]) -> list[int]:
        segs = segments_from_ids(ids, {self.image_token_id: Segment.VISUAL})
        fake = self.processor.tokenizer.convert_tokens_to_ids(getattr(self.processor, "fake_image_token", FAKE))
        fakes = [i for i, t in enumerate(ids) if t == fake]
        if len(fakes) >= 2:
            first, last = fakes[0], fakes[-1]
            for i in range(first + 1, last):
                if segs[i] != Segment.VISUAL:
                    segs[i] = int(Segment.IMAGE_SEP)
            segs[first], segs[last] = int(Segment.IMAGE_START), int(Segment.IMAGE_END)
        return segs

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        placeholder = getattr(self.processor, "image_token", "<image>")
        enc = encode_examples(
            self.processor, examples, self.image_token_id,
            text=lambda ex: prompt_text(self.processor, ex, placeholder),
            segments=self._segments, images=lambda image: [[image]], placeholder=placeholder,
        )
        # tile counts differ with image splitting: all-zero padding tiles are dropped by the model
        extra = {"pixel_values": _pad_tiles([f["pixel_values"] for f in enc.features])}
        if "pixel_attention_mask" in enc.features[0]:
            extra["pixel_attention_mask"] = _pad_tiles([f["pixel_attention_mask"] for f in enc.features])
        return assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)


def _pad_tiles(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate [1, tiles, ...] tensors along the batch, zero-padding the tile axis to the longest."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        if t.shape[1] < width:
            t = torch.cat([t, t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))], dim=1)
        out.append(t)
    return torch.cat(out)
