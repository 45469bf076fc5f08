"""Adapter registry: one ModelAdapter per architecture family, found by `config.model_type`."""

from __future__ import annotations

import importlib
from typing import Any

from probe.models.base import ModelAdapter

_ADAPTERS: dict[str, type[ModelAdapter]] = {}


class UnsupportedModelError(ValueError):
    """No adapter serves this model family."""


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: register an adapter under its `name` (a duplicate name raises)."""
    if cls.name in _ADAPTERS and _ADAPTERS[cls.name] is not cls:
        raise ValueError(f"an adapter named {cls.name!r} is already registered ({_ADAPTERS[cls.name].__name__})")
    _ADAPTERS[cls.name] = cls
    return cls


def available_adapters() -> dict[str, tuple[str, ...]]:
    """Adapter name -> the model types it serves."""
    _load_builtin()
    return {name: cls.model_types for name, cls in sorted(_ADAPTERS.items())}


def adapter_class(config: Any) -> type[ModelAdapter]:
    """The adapter class for a model config; one-line error naming the type and the supported ones."""
    _load_builtin()
    for cls in _ADAPTERS.values():
        if cls.matches(config):
            return cls
    supported = sorted(t for cls in _ADAPTERS.values() for t in cls.model_types)
    raise UnsupportedModelError(
        f"unsupported model family {getattr(config, 'model_type', None)!r}; supported: {', '.join(supported)}"
    )


def adapter_for(model: Any, processor: Any) -> ModelAdapter:
    """Wrap a loaded model and its processor in the adapter for its family."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return adapter_class(base.config)(model, processor)


_FAMILIES = ("llava", "internvl", "qwen2_vl", "qwen3_vl", "idefics3", "gemma3")


def _load_builtin() -> None:
    # importing the family modules registers them
    for family in _FAMILIES:
        importlib.import_module(f"probe.models.{family}")
