"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution ViT → patch merger → Qwen2 decoder with M-RoPE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from probe.data.example import Example
from probe.models._inputs import assemble_encoded, encode_examples, prompt_text, segments_from_ids
from probe.models.base import ModelAdapter, ModelInputs, standard_components, standard_sites
from probe.models.layout import VisualLayout, grid_layout
from probe.models.registry import register_adapter
from probe.segments import Segment

VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


@register_adapter
class Qwen2VLAdapter(ModelAdapter):
    """`<|vision_start|>` + `<|image_pad|>`×(grid/merge²) + `<|vision_end|>`; the token count follows the image size.

    pixel_values is flat [sum of patches, dim] with image_grid_thw [n_images, 3]; the model derives the
    3-D M-RoPE positions from input_ids, image_grid_thw and attention_mask, so no position_ids are passed.
    """

    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    sites = standard_sites("model.visual.blocks.{last}", "model.visual.merger", "model.language_model.layers")
    # the vision component is the whole ViT but its merger, which is the projector (nested: see `component`)
    components = standard_components("model.visual", "model.visual.merger", "model.language_model")

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        last = len(self.base_model.get_submodule("model.visual.blocks")) - 1
        # per instance: the last vision block's index depends on the checkpoint
        self.sites = {k: v.replace("{last}", str(last)) for k, v in type(self).sites.items()}

    def vision_order(self, image_grid_thw: torch.Tensor, level: str = "merged") -> torch.Tensor:
        """Row permutation that puts captured vision rows in the decoder's image-token order.

        The vision blocks and the merger see all images of a batch flat, one row per patch ("patch") or per
        merged token ("merged"). Qwen2.5-VL's windowed ViT permutes merged units before the blocks and
        undoes it only after the merger, so `captured[order]` is what fills the image tokens, image by image.
        Identity for Qwen2-VL.
        """
        if level not in ("merged", "patch"):
            raise ValueError(f"level must be 'merged' or 'patch', got {level!r}")
        vcfg = self.model.config.vision_config
        unit = vcfg.spatial_merge_size**2
        n_merged = int(image_grid_thw.prod(-1).sum()) // unit
        if self.model.config.model_type == "qwen2_5_vl":
            from transformers.vision_utils import get_vision_window_index

            window_index, _ = get_vision_window_index(
                image_grid_thw.cpu(), spatial_merge_size=vcfg.spatial_merge_size,
                window_size=vcfg.window_size, patch_size=vcfg.patch_size,
            )
            order = torch.argsort(window_index)
        else:
            order = torch.arange(n_merged)
        if level == "patch":
            order = (order[:, None] * unit + torch.arange(unit)).flatten()
        return order

    def visual_row_counts(self, batch: ModelInputs) -> dict[str, list[int]]:
        """Patches per image at the vision blocks and the merger's input; merged tokens after it."""
        patches = batch.inputs["image_grid_thw"].prod(-1).tolist()
        unit = self.model.config.vision_config.spatial_merge_size ** 2
        return {"vision.out": patches, "projector.in": patches, "projector.out": [n // unit for n in patches]}

    def _ordered_rows(self, site: str, flat: torch.Tensor, batch: ModelInputs) -> torch.Tensor:
        """Undo Qwen2.5-VL's window order (identity for Qwen2-VL)."""
        level = "merged" if site == "projector.out" else "patch"
        return flat[self.vision_order(batch.inputs["image_grid_thw"], level).to(flat.device)]

    def visual_layout(self, batch: ModelInputs) -> list[VisualLayout]:
        """One tile, the whole image (resized by the processor to a multiple of the merged patch): tokens row-major."""
        merge = self.model.config.vision_config.spatial_merge_size
        out = []
        for b, (t, h, w) in enumerate(batch.inputs["image_grid_thw"].tolist()):
            size = batch.image_size(b)
            whole = (0.0, 0.0, float(size[1]), float(size[0]))
            layout = grid_layout(0, whole, h // merge, w // merge, size)
            out.append(VisualLayout.concat([layout] * t))  # an image has t = 1 (its frame doubled in time)
        return out

    def _roles(self) -> dict[int, Segment]:
        cfg = self.model.config
        return {
            self.image_token_id: Segment.VISUAL,
            int(cfg.vision_start_token_id): Segment.IMAGE_START,
            int(cfg.vision_end_token_id): Segment.IMAGE_END,
        }

    def _text(self, ex: Example) -> str:
        placeholder = getattr(self.processor, "image_token", IMAGE_PAD)
        text = prompt_text(self.processor, ex, placeholder)
        if VISION_START not in text:  # no chat template: wrap the bare placeholder in its markers
            text = text.replace(placeholder, f"{VISION_START}{placeholder}{VISION_END}", 1)
        return text

    def continuation_positions(self, prompts: ModelInputs, owner: torch.Tensor, width: int) -> torch.Tensor | None:
        """M-RoPE: text after the prompt continues on all three axes from the prompt's largest position + 1.

        The prompt's 3-D positions are the model's own (`get_rope_index`, as its forward computes them); this is
        where generation continues too (transformers' rope_deltas). Returns [3, rows, width] long.
        """
        inp = prompts.inputs
        pos, _ = self.base_model.model.get_rope_index(
            inp["input_ids"], inp["mm_token_type_ids"], image_grid_thw=inp["image_grid_thw"],
            attention_mask=inp["attention_mask"])
        start = pos.amax(dim=(0, 2)) + 1  # padding holds position 0, so the maximum is a real token's
        steps = start[owner, None] + torch.arange(width, device=pos.device)[None]
        return steps[None].expand(3, -1, -1)

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        roles = self._roles()
        enc = encode_examples(self.processor, examples, self.image_token_id, text=self._text,
                              segments=lambda ids: segments_from_ids(ids, roles),
                              placeholder=getattr(self.processor, "image_token", IMAGE_PAD))
        extra = {key: torch.cat([f[key] for f in enc.features]) for key in ("pixel_values", "image_grid_thw")}
        # the model derives M-RoPE positions from input_ids, image_grid_thw and attention_mask
        batch = assemble_encoded(examples, enc, self.processor.tokenizer, padding_side, extra, real_positions=False)
        # M-RoPE needs to know which positions are image tokens (1) and which are text (0)
        batch.inputs["mm_token_type_ids"] = (batch.segments == int(Segment.VISUAL)).long()
        return batch
