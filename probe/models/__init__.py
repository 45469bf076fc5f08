"""Model adapters (one per family), the registry, loading, and tiny models for tests."""

from probe.models.base import BadExampleError, ModelAdapter, ModelInputs
from probe.models.layout import VISUAL_SITES, VisualLayout
from probe.models.loading import load_model
from probe.models.registry import UnsupportedModelError, adapter_for, available_adapters, register_adapter
from probe.provenance import weights_hash

__all__ = [
    "BadExampleError",
    "ModelAdapter",
    "ModelInputs",
    "UnsupportedModelError",
    "VISUAL_SITES",
    "VisualLayout",
    "adapter_for",
    "available_adapters",
    "load_model",
    "register_adapter",
    "weights_hash",
]
