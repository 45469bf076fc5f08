"""Provenance attrs stored with every output: what model, which weights, which code."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("visblind", "torch", "transformers", "nnsight", "zarr", "xarray", "numpy", "peft")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance_attrs(*, model_id: str, weights_hash: str, adapter: str, lora_adapter: str = "", **extra: str) -> dict[str, str]:
    """Attrs identifying model, weights and code versions, plus the creation time."""
    return {
        "model_id": model_id,
        "weights_hash": weights_hash,
        "adapter": adapter,
        "lora_adapter": lora_adapter,
        "versions": json.dumps(package_versions(), sort_keys=True),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def weights_hash(model) -> str:
    """sha256 over parameter and buffer names and bytes, in state-dict order: identifies the weights."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
