"""Per-component freezing through the adapter's canonical sites."""

from __future__ import annotations

from torch import nn

from probe.models.base import ModelAdapter
from train.sft.config import frozen_layer_indices


def component_parameters(adapter: ModelAdapter, component: str) -> list[nn.Parameter]:
    """Parameters of a named component: vision, projector, embeddings or decoder (everything else)."""
    if component == "vision":
        return list(adapter.vision_tower.parameters())
    if component == "projector":
        return list(adapter.projector.parameters())
    if component == "embeddings":
        return list(adapter.input_embeddings.parameters())
    if component == "decoder":
        other = {id(p) for c in ("vision", "projector") for p in component_parameters(adapter, c)}
        return [p for p in adapter.model.parameters() if id(p) not in other]
    raise ValueError(f"unknown component {component!r}")


def apply_freeze(adapter: ModelAdapter, freeze: tuple[str, ...]) -> int:
    """Set requires_grad=False on every frozen parameter; returns the number of trainable parameters."""
    layers = frozen_layer_indices(freeze)
    n_layers = adapter.num_layers
    bad = sorted(i for i in layers if i >= n_layers)
    if bad:
        raise ValueError(f"freeze: decoder layer(s) {bad} out of range (model has {n_layers})")
    for tok in freeze:
        if not tok.startswith("layer"):
            for p in component_parameters(adapter, tok):
                p.requires_grad_(False)
    for i in layers:
        for p in adapter.decoder_layers[i].parameters():
            p.requires_grad_(False)
    return sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)


def lora_target_modules(adapter: ModelAdapter, freeze: tuple[str, ...]) -> list[str]:
    """Full names of the Linear modules inside the unfrozen decoder layers (LoRA's targets)."""
    if "decoder" in freeze:
        return []
    skip = frozen_layer_indices(freeze)
    layer_ids = {id(layer): i for i, layer in enumerate(adapter.decoder_layers)}
    names = {id(m): n for n, m in adapter.model.named_modules()}
    targets: list[str] = []
    for layer_id, i in layer_ids.items():
        if i in skip:
            continue
        layer = adapter.decoder_layers[i]
        prefix = names[layer_id]
        targets += [f"{prefix}.{n}" for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    return targets
