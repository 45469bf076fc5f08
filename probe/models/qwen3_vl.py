"""Qwen3-VL: ViT → patch merger → Qwen3 decoder with interleaved M-RoPE, plus DeepStack injections into early layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probe.models.base import ModelInputs, standard_components
from probe.models.qwen2_vl import Qwen2VLAdapter
from probe.models.registry import register_adapter


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen2-VL's token layout; DeepStack mergers read vision blocks and add to decoder layers' outputs.

    DeepStack merger j (`model.visual.deepstack_merger_list.j`) reads vision block `deepstack_visual_indexes[j]`
    and its output, one row per visual token, is added to the VISUAL positions of decoder layer j's output.
    Sites `deepstack.{j}` read those rows, as `projector.out` reads the merger's; the mergers together are the
    component `deepstack` (a projector-like part: `--freeze projector` freezes it).
    """

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    components = standard_components("model.visual", "model.visual.merger", "model.language_model",
                                     deepstack="model.visual.deepstack_merger_list")

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self.sites = {**self.sites, **{site: f"model.visual.deepstack_merger_list.{j}" for j, site in enumerate(self.deepstack_sites)}}

    @property
    def deepstack_sites(self) -> list[str]:
        """`deepstack.{j}` for each DeepStack merger j, whose rows are added after decoder layer j."""
        return [f"deepstack.{j}" for j in range(len(self.model.config.vision_config.deepstack_visual_indexes))]

    def deepstack_layer(self, site: str) -> int:
        """The decoder layer whose output a DeepStack site's rows are added to."""
        if site not in self.deepstack_sites:
            raise KeyError(f"adapter {self.name!r}: no DeepStack site {site!r}; known: {', '.join(self.deepstack_sites)}")
        return int(site.removeprefix("deepstack."))

    def visual_row_counts(self, batch: ModelInputs) -> dict[str, list[int]]:
        """Qwen2-VL's counts, plus one row per visual token at every DeepStack site."""
        counts = super().visual_row_counts(batch)
        return {**counts, **{site: list(counts["projector.out"]) for site in self.deepstack_sites}}

    def _ordered_rows(self, site: str, flat: torch.Tensor, batch: ModelInputs) -> torch.Tensor:
        return flat  # no windowed attention: the vision rows are already in token order
