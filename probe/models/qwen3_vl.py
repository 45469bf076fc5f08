"""Qwen3-VL: ViT → patch merger → Qwen3 decoder with interleaved M-RoPE, plus DeepStack injections into early layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probe.models.base import ModelInputs, standard_components
from probe.models.qwen2_vl import Qwen2VLAdapter
from probe.models.registry import register_adapter

DEEPSTACK = "deepstack.{i}"


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen2-VL's token layout; DeepStack mergers read vision blocks and add to decoder layers' outputs.

    DeepStack merger j (`model.visual.deepstack_merger_list.j`) reads vision block `deepstack_visual_indexes[j]`;
    its output, one row per visual token, is added to the VISUAL positions of decoder layer j's output. The site
    `deepstack.{i}` reads what is added after decoder layer i (it exists at `site_layers("deepstack.{i}")` only),
    row for row like `projector.out`; the mergers together are the component `deepstack` (a projector-like part:
    `--freeze projector` freezes it).
    """

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    components = standard_components("model.visual", "model.visual.merger", "model.language_model",
                                     deepstack="model.visual.deepstack_merger_list")

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self.sites = {**self.sites, DEEPSTACK: "model.visual.deepstack_merger_list.{i}"}
        # merger j is declared after the final merger but called right after vision block deepstack_visual_indexes[j]
        blocks = self.model.config.vision_config.deepstack_visual_indexes
        self.runs_after = {f"model.visual.deepstack_merger_list.{j}": f"model.visual.blocks.{b}" for j, b in enumerate(blocks)}

    @property
    def deepstack_layers(self) -> list[int]:
        """The decoder layers whose outputs receive DeepStack rows (merger j feeds layer j)."""
        return list(range(len(self.model.config.vision_config.deepstack_visual_indexes)))

    def site_layers(self, site: str) -> list[int]:
        return self.deepstack_layers if site == DEEPSTACK else super().site_layers(site)

    def visual_row_counts(self, batch: ModelInputs) -> dict[str, list[int]]:
        """Qwen2-VL's counts, plus one row per visual token at the DeepStack site."""
        counts = super().visual_row_counts(batch)
        return {**counts, DEEPSTACK: list(counts["projector.out"])}

    def _ordered_rows(self, site: str, flat: torch.Tensor, batch: ModelInputs) -> torch.Tensor:
        return flat  # no windowed attention: the vision rows are already in token order
