"""ModelAdapter: everything architecture-specific about a multimodal model, in one place."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from probe.data.example import Example
from probe.models.layout import VISUAL_SITES, VisualLayout
from probe.models.surgery import ComponentOps
from probe.segments import Segment


@dataclass
class ModelInputs:
    """A batch ready for `model(**inputs)`, with the role of every position.

    inputs: keyword arguments of the model's forward (input_ids, attention_mask, pixel_values, ...)
    segments: [batch, seq] int64 `Segment` codes, aligned with input_ids (PAD where attention_mask is 0)
    labels: [batch, seq] int64, -100 everywhere but ANSWER positions (None when no answer was given)
    example_ids: the `Example.id` of each row
    image_sizes: each row's original image (height, width), before the processor resized it
    """

    inputs: dict[str, Any]
    segments: torch.Tensor
    labels: torch.Tensor | None
    example_ids: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "ModelInputs":
        """Move every tensor to `device`."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.inputs.items()}
        labels = self.labels.to(device) if self.labels is not None else None
        return ModelInputs(moved, self.segments.to(device), labels, list(self.example_ids), list(self.image_sizes))

    def image_size(self, row: int) -> tuple[int, int]:
        """Row `row`'s original image (height, width); ValueError when the batch was built without sizes."""
        if row >= len(self.image_sizes):
            raise ValueError(f"ModelInputs row {row}: no image size recorded (build the batch with ModelAdapter.build_inputs)")
        return self.image_sizes[row]


def standard_components(vision: str, projector: str, language_model: str, **extras: str) -> dict[str, str]:
    """The canonical component map (name -> module or parameter path) of a vision -> projector -> decoder model.

    `language_model` is the decoder's base module (holding `embed_tokens`, `layers`, `norm`); `extras` are
    family-specific pieces outside those, e.g. LLaVA-NeXT's learned `image_newline` parameter.
    """
    return {
        "vision": vision,
        "projector": projector,
        "embed": f"{language_model}.embed_tokens",
        "lm.layer.{i}": f"{language_model}.layers.{{i}}",
        "final_norm": f"{language_model}.norm",
        "lm_head": "lm_head",
        **extras,
    }


def standard_sites(vision: str, projector: str, decoder_layers: str) -> dict[str, str]:
    """The canonical site map of a vision tower -> projector -> decoder model, from three module paths."""
    return {
        "vision.out": vision,
        "projector.in": projector,
        "projector.out": projector,
        "lm.layer.{i}.resid": f"{decoder_layers}.{{i}}",
        "lm.layer.{i}.attn": f"{decoder_layers}.{{i}}.self_attn",
        "lm.layer.{i}.mlp": f"{decoder_layers}.{{i}}.mlp",
    }


class ModelAdapter(ComponentOps, ABC):
    """Knows where a family's vision tower, projector and decoder are, and how to feed it.

    Subclasses declare `name`, `model_types` (the `config.model_type` values they serve) and
    `sites`: canonical site name -> module path (with `{i}` for the decoder layer index),
    e.g. {"vision.out": "model.vision_tower", "projector.out": "model.multi_modal_projector",
          "lm.layer.{i}.resid": "model.language_model.layers.{i}",
          "lm.layer.{i}.attn": "model.language_model.layers.{i}.self_attn"}.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    sites: ClassVar[dict[str, str]]
    # the modules a user freezes, swaps or edits (see `standard_components`); kept apart from the read sites,
    # which may sit inside a component (Qwen2-VL reads `vision.out` at the last vision block)
    components: ClassVar[dict[str, str]]
    # module path -> the module whose output it is called right after, for modules declared out of call order
    # (capture requests nnsight taps in call order, read off the module tree's declaration order otherwise)
    runs_after: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor

    # --- structure -------------------------------------------------------------------
    def module(self, site: str, i: int | None = None) -> nn.Module:
        """The module at canonical `site` (layer index `i` for per-layer sites)."""
        path = self.sites[site].format(i=i)
        return self.base_model.get_submodule(path)

    @property
    def base_model(self) -> nn.Module:
        """The wrapped transformers model (a PEFT model's base model); component paths are relative to it."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def component_names(self) -> list[str]:
        """Every component name, decoder layers expanded (`lm.layer.0`, `lm.layer.1`, ...), in forward order."""
        names: list[str] = []
        for name in self.components:
            if "{i}" in name:
                names += [name.format(i=i) for i in range(self.num_layers)]
            else:
                names.append(name)
        return names

    def component_path(self, name: str) -> str:
        """Module (or parameter) path of component `name`; one-line KeyError naming the known ones."""
        if name in self.components:
            return self.components[name]
        layer = "lm.layer.{i}"
        if layer in self.components and name.startswith("lm.layer.") and name.removeprefix("lm.layer.").isdigit():
            i = int(name.removeprefix("lm.layer."))
            if i < self.num_layers:
                return self.components[layer].format(i=i)
        raise KeyError(f"adapter {self.name!r}: no component {name!r}; known: {', '.join(self.component_names())}")

    def component(self, name: str) -> nn.Module | nn.Parameter:
        """The module of component `name` (a parameter for parameter components such as `image_newline`).

        Components may nest (Qwen2-VL's projector is `visual.merger`, inside `visual`): the module of the
        outer one then includes the inner one, while `component_parameters` keeps them apart.
        """
        path = self.component_path(name)
        try:
            return self.base_model.get_submodule(path)
        except AttributeError:
            return self.base_model.get_parameter(path)

    def component_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Qualified name -> parameter of component `name`; the components' parameters partition the model's.

        A parameter belongs to the component with the longest path that prefixes its name, so a nested
        component's parameters are not its parent's. Tied weights (lm_head = embed_tokens) are one parameter,
        listed once by `named_parameters` under the embedding's name: they belong to `embed`, and `lm_head`
        then has none of its own.
        """
        self.component_path(name)  # unknown name: KeyError
        owners = self.parameter_owners()
        return {qual: p for qual, p in self.base_model.named_parameters() if owners[qual] == name}

    def parameter_owners(self) -> dict[str, str | None]:
        """Qualified parameter name -> the component owning it (None: no component; a bug in the adapter)."""
        paths = sorted(((self.component_path(n), n) for n in self.component_names()), key=lambda pn: -len(pn[0]))

        def owner(qualified: str) -> str | None:
            return next((n for path, n in paths if qualified == path or qualified.startswith(path + ".")), None)

        return {qual: owner(qual) for qual, _ in self.base_model.named_parameters()}

    def site_layers(self, site: str) -> list[int]:
        """The decoder layers at which a per-layer site (`{i}` in its name) exists: every layer, unless a family says
        otherwise (Qwen3-VL's `deepstack.{i}` exists at its DeepStack layers only)."""
        return list(range(self.num_layers))

    @property
    def vision_tower(self) -> nn.Module:
        """The whole vision encoder (component `vision`)."""
        return self.component("vision")

    @property
    def projector(self) -> nn.Module:
        """The vision-to-language projector (component `projector`)."""
        return self.component("projector")

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The LLM decoder's layers, in order (the module list the `lm.layer.{i}.resid` site indexes)."""
        return self.base_model.get_submodule(self.sites["lm.layer.{i}.resid"].removesuffix(".{i}"))

    @property
    def image_token_id(self) -> int:
        """The id of the token the model replaces with visual features."""
        return int(self.model.config.image_token_id)

    @property
    def attention_modules(self) -> list[nn.Module]:
        """The self-attention module of every decoder layer, in order."""
        return [self.module("lm.layer.{i}.attn", i) for i in range(len(self.decoder_layers))]

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def num_heads(self) -> int:
        return self.text_config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.text_config, "num_key_value_heads", None) or self.num_heads

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    # --- inputs ----------------------------------------------------------------------
    @abstractmethod
    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        """Tokenise (image, prompt, optional answer) for a batch, through the family's processor.

        Inserts the image placeholder itself when the prompt has none; raises `BadExampleError`
        naming the example when an image is missing/corrupt or the image-token count is wrong.
        """

    def continuation_positions(self, prompts: ModelInputs, owner: torch.Tensor, width: int) -> torch.Tensor | None:
        """Position ids of `width` tokens continuing the left-padded prompts `owner[r]` from their KV cache.

        prompts: a batch built with padding_side="left"; owner: [rows] long, the prompt row each continuation
        extends. Returns [rows, width] long (1-D RoPE: the token after a prompt's last position, and on), or None
        when the batch carries no position ids to continue from.
        """
        pos = prompts.inputs.get("position_ids")
        if pos is None or pos.dim() != 2:
            return None
        start = pos[:, -1] + 1  # left padding: the last column holds every prompt's last position
        return start[owner, None] + torch.arange(width, device=pos.device)[None]

    @staticmethod
    def n_visual_tokens(segments: torch.Tensor) -> torch.Tensor:
        """Visual tokens entering the decoder per row: segments [batch, seq] -> [batch] long."""
        return (segments == int(Segment.VISUAL)).sum(-1)

    def visual_units(self, batch: ModelInputs) -> list[int]:
        """Per example, the units every captured visual tensor (vision out, projector in/out) has a fixed row count per.

        The vision tower and projector see a batch's images flat; rows are split per example in
        proportion to these counts. Visual tokens by default (k rows per token, e.g. 4 before a 2x2
        merger); families whose projector rows do not follow the token count (anyres tiling) override it.
        Superseded by `visual_row_counts` / `visual_rows`; kept until capture uses those.
        """
        return self.n_visual_tokens(batch.segments).tolist()

    @staticmethod
    def visual_positions(segments: torch.Tensor, row: int) -> torch.Tensor:
        """Sequence indices of row `row`'s visual tokens, in projector-output order: [n_visual] long."""
        return (segments[row] == int(Segment.VISUAL)).nonzero().flatten()

    # --- visual rows and layout --------------------------------------------------------
    def site_tensor(self, site: str, value: Any) -> torch.Tensor:
        """The main tensor of a site's module input or output (a tensor, tuple, ModelOutput or (args, kwargs))."""
        return main_tensor(value)

    def visual_tiles(self, batch: ModelInputs) -> list[int]:
        """Tiles per example: the images the vision tower sees one by one (1 for single-view families)."""
        return [1] * len(batch.segments)

    def rows_per_tile(self) -> dict[str, int]:
        """Rows each tile contributes to each visual site (`VISUAL_SITES`), e.g. patches + CLS at `vision.out`."""
        raise NotImplementedError(f"adapter {self.name!r} does not say how many rows a tile has")

    def visual_row_counts(self, batch: ModelInputs) -> dict[str, list[int]]:
        """Rows per example at each visual site, from the inputs alone (no forward pass)."""
        per_tile = self.rows_per_tile()
        return {site: [t * per_tile[site] for t in self.visual_tiles(batch)] for site in VISUAL_SITES}

    def visual_rows(self, site: str, tensor: torch.Tensor, batch: ModelInputs) -> list[torch.Tensor]:
        """Per example, the site's rows `[rows, d]` in the order the decoder sees the visual tokens.

        `projector.out` gives exactly one row per VISUAL position, in sequence order. Sites before the
        family's last rearrangement (anyres unpadding) give every row the module emits, tile by tile in
        `VisualLayout.tile` order (a CLS row first in each tile where the tower has one).
        """
        counts = self.visual_row_counts(batch)[site]
        flat = self._ordered_rows(site, tensor.reshape(-1, tensor.shape[-1]), batch)
        if flat.shape[0] != sum(counts):
            raise ValueError(f"adapter {self.name!r}: site {site!r} has {flat.shape[0]} rows, the inputs need {sum(counts)}")
        return list(flat.split(counts))

    def _ordered_rows(self, site: str, flat: torch.Tensor, batch: ModelInputs) -> torch.Tensor:
        """A site's rows `[rows, d]` of the whole batch put in decoder order (already so for most families)."""
        return flat

    def visual_layout(self, batch: ModelInputs) -> list[VisualLayout]:
        """Per example, the tile, token-grid place and original-image box of every VISUAL position."""
        raise NotImplementedError(f"adapter {self.name!r} has no visual layout")

    @classmethod
    def matches(cls, config: Any) -> bool:
        """Whether this adapter serves a model with this config."""
        return getattr(config, "model_type", None) in cls.model_types


def main_tensor(value: Any) -> torch.Tensor:
    """The main tensor of a module output or input (tuples, ModelOutputs, args/kwargs pairs)."""
    if isinstance(value, torch.Tensor):
        return value
    if getattr(value, "last_hidden_state", None) is not None:
        return value.last_hidden_state
    if getattr(value, "pooler_output", None) is not None:  # Qwen-VL visual towers
        return value.pooler_output
    if isinstance(value, dict):
        value = [value["hidden_states"]] if "hidden_states" in value else list(value.values())
    if isinstance(value, (tuple, list)):  # the first item holding a tensor: (args, kwargs) may have no args
        for item in value:
            try:
                return main_tensor(item)
            except TypeError:
                continue
    raise TypeError(f"cannot find a tensor in {type(value).__name__}")


class BadExampleError(ValueError):
    """One example cannot be fed to the model; the message names it and says why in one line."""

    def __init__(self, example_id: str, reason: str) -> None:
        super().__init__(f"example {example_id!r}: {reason}")
        self.example_id = example_id
        self.reason = reason
