"""Provenance attrs stored with every output: what model, which weights, which code."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def checkpoint_weights_hash(model, sources: Sequence[str | os.PathLike]) -> str:
    """`weights_hash(model)` for a model just loaded from the local folders `sources` (checkpoint, LoRA adapter),
    computed once per checkpoint: cached under a key of every safetensors file's (path, size, mtime, inode)
    plus the model's state-dict names, dtypes and shapes (a load in another dtype is another key).

    Why a cache of the full hash rather than a hash of the files' headers and sizes: a fine-tuned
    checkpoint has exactly the headers and sizes of its base, so only the bytes tell them apart; and
    caching the state-dict hash keeps it equal to that of the same weights captured from memory.
    A folder rewritten in place gets a new mtime (and usually inode), hence a new key. Hub ids and
    folders without safetensors files are hashed from the tensors every time.
    """
    folders = [Path(s) for s in sources]
    files = sorted(f for d in folders if d.is_dir() for f in d.glob("*.safetensors"))
    if not files or not all(d.is_dir() for d in folders):
        return weights_hash(model)
    stamp = []
    for f in files:
        st = f.stat()
        stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino])
    layout = [[k, str(t.dtype), list(t.shape)] for k, t in model.state_dict().items()]
    key = hashlib.sha256(json.dumps([stamp, layout]).encode()).hexdigest()
    cache = _cache_dir() / "weights_hash.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    value = weights_hash(model)
    known[key] = value
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    except OSError:  # a read-only home: the hash is still right, only not remembered
        pass
    return value


def _cache_dir() -> Path:
    if os.environ.get("VISBLIND_CACHE_DIR"):
        return Path(os.environ["VISBLIND_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visblind"
