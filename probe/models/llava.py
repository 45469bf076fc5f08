"""LLaVA family: LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision (VARCO-VISION-2.0) share this adapter.

LLaVA-NeXT and LLaVA-OneVision ("anyres") cut an image into a base tile plus a grid of tiles. The `<image>` run
holds the base tile's patches, then the unpadded grid's patches row by row (bilinearly shrunk first by OneVision's
`vision_aspect_ratio` when large), each row closed by the learned `image_newline` embedding. The newline positions
carry an image-token id but no image content: they are IMAGE_SEP, the patch positions VISUAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import BadExampleError, ModelAdapter, ModelInputs, standard_components, standard_sites
from probe.models.layout import VisualLayout, clip_boxes, grid_layout
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
            segments=lambda ids: segments_from_ids(ids, {self.image_token_id: Segment.VISUAL}), placeholder=placeholder,
        )
        extra = {"pixel_values": _cat_padded([f["pixel_values"] for f in enc.features])}
        if "image_sizes" in enc.features[0]:
            extra["image_sizes"] = torch.cat([f["image_sizes"] for f in enc.features])
        if getattr(self.model.config, "image_grid_pinpoints", None):  # anyres: LLaVA-NeXT, LLaVA-OneVision
            for ex, ids, segs, feature in zip(examples, enc.prompts, enc.segments, enc.features):
                for i in self._newline_positions(ex, ids, feature):
                    segs[i] = int(Segment.IMAGE_SEP)
        return assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra)

    @property
    def anyres(self) -> bool:
        """LLaVA-NeXT / OneVision tiling (base tile + tile grid), as opposed to LLaVA-1.5's single view."""
        return bool(getattr(self.model.config, "image_grid_pinpoints", None))

    def visual_units(self, batch: ModelInputs) -> list[int]:
        """Tiles per example for anyres models (their projector rows are tiles × patches); visual tokens otherwise."""
        if not self.anyres:
            return super().visual_units(batch)
        return self.visual_tiles(batch)

    # --- rows and layout -------------------------------------------------------------
    @property
    def _patches_per_side(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def visual_tiles(self, batch: ModelInputs) -> list[int]:
        """Tiles per example: 1, or anyres's base tile + grid tiles (padding tiles never reach the tower)."""
        if not self.anyres:
            return super().visual_tiles(batch)
        return [self._num_tiles((int(h), int(w))) for h, w in batch.inputs["image_sizes"].tolist()]

    def _num_tiles(self, image_size: tuple[int, int]) -> int:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = self.model.config
        return image_size_to_num_patches(image_size=image_size, grid_pinpoints=cfg.image_grid_pinpoints,
                                         patch_size=cfg.vision_config.image_size)

    def rows_per_tile(self) -> dict[str, int]:
        """CLIP emits a CLS row before the patches (SigLIP none); the "default" feature strategy drops the first row."""
        embeddings = getattr(self.component("vision"), "embeddings", None)
        tower = self._patches_per_side**2 + int(hasattr(embeddings, "class_embedding"))
        kept = tower - int(self.model.config.vision_feature_select_strategy == "default")
        return {"vision.out": tower, "projector.in": kept, "projector.out": kept}

    def visual_row_counts(self, batch: ModelInputs) -> dict[str, list[int]]:
        counts = super().visual_row_counts(batch)
        if self.anyres:  # after unpadding (and OneVision's shrinking): one row per VISUAL position
            counts["projector.out"] = self.n_visual_tokens(batch.segments).tolist()
        return counts

    def visual_rows(self, site: str, tensor: torch.Tensor, batch: ModelInputs) -> list[torch.Tensor]:
        if not (self.anyres and site == "projector.out"):
            return super().visual_rows(site, tensor, batch)
        tiles = self.visual_tiles(batch)
        per_tile = tensor.reshape(sum(tiles), -1, tensor.shape[-1]).split(tiles)
        # transformers' own unpadding (and shrinking), without the newline rows: the decoder's VISUAL inputs
        rows = self._pack(list(per_tile), batch.inputs["image_sizes"], newline=None)
        want = self.n_visual_tokens(batch.segments).tolist()
        if [len(r) for r in rows] != want:
            raise ValueError(f"adapter {self.name!r}: unpadded projector rows {[len(r) for r in rows]} != visual tokens {want}")
        return rows

    def _pack(self, features: list[torch.Tensor], image_sizes: torch.Tensor, newline: torch.Tensor | None) -> list[torch.Tensor]:
        """The model's `pack_image_features`: per image [tiles, patches, d] -> its image-token rows in sequence order."""
        inner = self.base_model.model
        if self.model.config.model_type == "llava_onevision":
            packed, _ = inner.pack_image_features(features, image_sizes, image_newline=newline,
                                                  vision_aspect_ratio=self.model.config.vision_aspect_ratio)
        else:
            packed, _ = inner.pack_image_features(features, image_sizes, self.model.config.vision_feature_select_strategy,
                                                  image_newline=newline)
        return list(packed)

    def _anyres_tokens(self, image_size: tuple[int, int]) -> torch.Tensor:
        """Every image-token position of an anyres image, in sequence order: [n, 4] float64 (y, x, visual, base).

        Runs the model's own packing on a tensor of token-centre coordinates, so unpadding, shrinking and the
        newline layout are exactly the model's. y, x: the token's centre in token units, in the base tile
        (base = 1) or in the padded tile grid (base = 0), where OneVision's shrinking makes them fractional;
        visual = 0 marks an `image_newline` position.
        """
        cache = self.__dict__.setdefault("_anyres_cache", {})  # build_inputs and visual_layout ask for the same sizes
        if image_size not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[image_size] = self._pack_coordinates(image_size)
        return cache[image_size]

    def _pack_coordinates(self, image_size: tuple[int, int]) -> torch.Tensor:
        side = self._patches_per_side
        grid_rows, grid_cols = self._grid_shape(image_size)
        r, c = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij")
        ones = torch.ones_like(r)
        tiles = [torch.stack([r + 0.5, c + 0.5, ones, ones], -1)]
        for k in range(grid_rows * grid_cols):
            gr, gc = divmod(k, grid_cols)
            tiles.append(torch.stack([gr * side + r + 0.5, gc * side + c + 0.5, ones, 0 * ones], -1))
        features = torch.stack(tiles).reshape(len(tiles), side * side, 4)
        sizes = torch.tensor([list(image_size)])
        return self._pack([features], sizes, newline=torch.zeros(4, dtype=torch.float64))[0]

    def _grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        cfg = self.model.config
        rows, cols = get_anyres_image_grid_shape(image_size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        return int(rows), int(cols)

    def visual_layout(self, batch: ModelInputs) -> list[VisualLayout]:
        layouts = [self._anyres_layout(batch.image_size(b)) if self.anyres else self._single_layout(batch.image_size(b))
                   for b in range(len(batch.segments))]
        for b, layout in enumerate(layouts):
            if len(layout) != int(self.n_visual_tokens(batch.segments[b:b + 1])[0]):
                raise ValueError(f"adapter {self.name!r}: layout of example {b} has {len(layout)} tokens, the inputs "
                                 f"{int(self.n_visual_tokens(batch.segments[b:b + 1])[0])}")
        return layouts

    def _single_layout(self, image_size: tuple[int, int]) -> VisualLayout:
        """LLaVA-1.5: one tile, the processor's view of the image (a centre crop after a shortest-edge resize)."""
        side = self._patches_per_side
        layout = grid_layout(0, self._view_box(image_size), side, side, image_size)
        if self.rows_per_tile()["projector.out"] == side * side + 1:  # "full" strategy on CLIP: the CLS token first
            cls = VisualLayout(np.zeros(1, np.int32), np.full(1, -1, np.int32), np.full(1, -1, np.int32),
                               layout.tile_box[:1], layout.tile_box[:1], layout.image_size)
            layout = VisualLayout.concat([cls, layout])
        return layout

    def _view_box(self, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The original-image region the single view shows: a shortest-edge resize then centre crop, or a plain resize."""
        ip = self.processor.image_processor
        height, width = image_size
        size, crop = dict(ip.size), dict(getattr(ip, "crop_size", None) or {})
        if not size.get("shortest_edge"):
            return (0.0, 0.0, float(width), float(height))
        short = size["shortest_edge"]
        # transformers' get_resize_output_image_size(default_to_square=False): the long side is truncated
        new_h, new_w = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
        if not (getattr(ip, "do_center_crop", False) and crop.get("height")):
            return (0.0, 0.0, float(width), float(height))
        top, left = (new_h - crop["height"]) // 2, (new_w - crop["width"]) // 2  # transformers' center_crop
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + crop["width"]) * sx, (top + crop["height"]) * sy)

    def _anyres_layout(self, image_size: tuple[int, int]) -> VisualLayout:
        """Base tile (the whole image, squashed) then the unpadded grid row by row, newline positions left out."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
        from transformers.image_utils import ChannelDimension

        height, width = image_size
        side, tile_px = self._patches_per_side, self.model.config.vision_config.image_size
        tokens = self._anyres_tokens(image_size).numpy()
        visual = tokens[tokens[:, 2] == 1]
        base = visual[visual[:, 3] == 1]
        parts = [grid_layout(0, (0.0, 0.0, float(width), float(height)), side, side, image_size)]
        assert len(base) == side * side  # the model puts the base tile's patches first, row-major
        grid = visual[visual[:, 3] == 0]
        if len(grid):
            grid_rows, grid_cols = self._grid_shape(image_size)
            canvas = select_best_resolution([height, width], self.model.config.image_grid_pinpoints)
            # the image as resized onto the canvas (aspect kept) and pasted centred (the processor's padding)
            new_h, new_w = get_patch_output_size(np.broadcast_to(np.zeros(1, np.uint8), (3, height, width)), canvas, ChannelDimension.FIRST)
            pad_y, pad_x = (canvas[0] - new_h) // 2, (canvas[1] - new_w) // 2
            n_rows = int((tokens[:, 2] == 0).sum())  # one newline closes each grid row
            span_h, span_w = self._unpadded_shape(image_size, grid_rows, grid_cols)
            cell_h, cell_w = span_h / n_rows, span_w / (len(grid) // n_rows)  # > 1 where OneVision shrank the grid
            y, x = grid[:, 0], grid[:, 1]
            px = tile_px / side  # canvas pixels per token
            sx, sy = width / new_w, height / new_h

            def to_image(xs, ys):
                return (xs * px - pad_x) * sx, (ys * px - pad_y) * sy

            x0, y0 = to_image(x - cell_w / 2, y - cell_h / 2)
            x1, y1 = to_image(x + cell_w / 2, y + cell_h / 2)
            tr, tc = np.floor(y / side), np.floor(x / side)
            tx0, ty0 = to_image(tc * side, tr * side)
            tx1, ty1 = to_image((tc + 1) * side, (tr + 1) * side)
            parts.append(VisualLayout(
                tile=(1 + tr * grid_cols + tc).astype(np.int32),
                row=(np.floor(y) - tr * side).astype(np.int32), col=(np.floor(x) - tc * side).astype(np.int32),
                box=clip_boxes(np.stack([x0, y0, x1, y1], 1), image_size),
                tile_box=clip_boxes(np.stack([tx0, ty0, tx1, ty1], 1), image_size), image_size=parts[0].image_size,
            ))
        return VisualLayout.concat(parts)

    def _unpadded_shape(self, image_size: tuple[int, int], grid_rows: int, grid_cols: int) -> tuple[int, int]:
        """Token rows and columns of the tile grid after transformers' unpadding (before any shrinking)."""
        from transformers.models.llava_next.modeling_llava_next import unpad_image

        side = self._patches_per_side
        unpadded = unpad_image(torch.empty(0, grid_rows * side, grid_cols * side), torch.tensor(image_size))
        return int(unpadded.shape[1]), int(unpadded.shape[2])

    def _newline_positions(self, example: Example, ids: list[int], feature: Any) -> list[int]:
        """Prompt positions of an anyres image's `image_newline` embeddings (one closing each row of the tile grid).

        Read off the model's own packing (`_anyres_tokens`); an image whose grid unpads to nothing (a very wide or
        tall image) has the base tile only and no newline.
        """
        span = [i for i, t in enumerate(ids) if t == self.image_token_id]
        height, width = (int(v) for v in feature["image_sizes"][0])
        visual = self._anyres_tokens((height, width))[:, 2]
        if len(visual) != len(span) or span[-1] - span[0] + 1 != len(span):
            raise BadExampleError(example.id, f"{len(span)} image tokens, the model's anyres layout for a "
                                              f"{height}x{width} image has {len(visual)}")
        return [span[i] for i in (visual == 0).nonzero().flatten().tolist()]


def _cat_padded(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-example pixel tensors; LLaVA-NeXT's patch counts may differ, so pad with zeros."""
    if all(p.shape[1:] == pixels[0].shape[1:] for p in pixels):
        return torch.cat(pixels)
    width = max(p.shape[1] for p in pixels)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in pixels])
