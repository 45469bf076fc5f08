"""Per-component freezing through the adapter's components."""

from __future__ import annotations

from torch import nn

from probe.models.base import ModelAdapter
from train.sft.config import frozen_layer_indices

_LANGUAGE = ("embed", "final_norm", "lm_head")


def freeze_components(adapter: ModelAdapter, choice: str) -> list[str]:
    """The adapter components a `--freeze` choice names.

    vision: the whole vision encoder; projector: the projector and any family extra between it and the
    decoder (LLaVA-NeXT's `image_newline`, trained with the projector in LLaVA-NeXT's recipe); embeddings:
    the input embeddings (and lm_head when tied to them); decoder: embeddings, every layer, final norm, lm_head.
    """
    names = adapter.component_names()
    layers = [n for n in names if n.startswith("lm.layer.")]
    if choice == "vision":
        return ["vision"]
    if choice == "projector":
        return [n for n in names if n not in ("vision", *_LANGUAGE, *layers)]
    if choice == "embeddings":
        return ["embed"]
    if choice == "decoder":
        return [n for n in names if n in _LANGUAGE or n in layers]
    raise ValueError(f"unknown component {choice!r}")


def component_parameters(adapter: ModelAdapter, choice: str) -> list[nn.Parameter]:
    """Parameters of a `--freeze` choice (vision, projector, embeddings or decoder)."""
    return [p for name in freeze_components(adapter, choice) for p in adapter.component_parameters(name).values()]


def apply_freeze(adapter: ModelAdapter, freeze: tuple[str, ...]) -> int:
    """Set requires_grad=False on every frozen parameter; returns the number of trainable parameters."""
    layers = frozen_layer_indices(freeze)
    n_layers = adapter.num_layers
    bad = sorted(i for i in layers if i >= n_layers)
    if bad:
        raise ValueError(f"freeze: decoder layer(s) {bad} out of range (model has {n_layers})")
    names = [n for tok in freeze if not tok.startswith("layer") for n in freeze_components(adapter, tok)]
    names += [f"lm.layer.{i}" for i in sorted(layers)]
    for name in names:
        for p in adapter.component_parameters(name).values():
            p.requires_grad_(False)
    return sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)


def lora_target_modules(adapter: ModelAdapter, freeze: tuple[str, ...]) -> list[str]:
    """Full names of the Linear modules inside the unfrozen decoder layers (LoRA's targets)."""
    if "decoder" in freeze:
        return []
    skip = frozen_layer_indices(freeze)
    targets: list[str] = []
    for i in range(adapter.num_layers):
        if i in skip:
            continue
        prefix = adapter.component_path(f"lm.layer.{i}")
        layer = adapter.component(f"lm.layer.{i}")
        targets += [f"{prefix}.{n}" for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    return targets
