"""Interop with other interpretability tools (TransformerLens)."""

from probe.interop.tl import activation_cache, boot_bridge, tl_activations

__all__ = ["activation_cache", "boot_bridge", "tl_activations"]
