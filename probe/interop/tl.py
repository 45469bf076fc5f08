"""TransformerLens interop: a stored example as an `ActivationCache` under TL's canonical hook names.

Store variables carry their TL hook in the `tl_site` attr (e.g. `blocks.{layer}.attn.hook_rot_k`). A variable
becomes hook tensors when it holds the hook's whole activation for the example: keys and queries at every
position, the residual stream at every position (`hook_resid_post_tokens`), attention rows for every query.
Reductions (shares per segment, pooled or query-slot residuals, rows of a few queries) are not TL activations
and are left out. transformer-lens is optional (`pip install visblind[tl]`): `tl_activations` needs only the store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe.store import TraceStore

# TL hook (last name component) -> the store dims after (example, layer), in TL's order for that hook:
# [batch, pos, head, d_head] for q/k, [batch, pos, d_model] for the residual, [batch, head, query, key] for patterns
_TL_LAYOUT: dict[str, tuple[str, ...]] = {
    "hook_rot_k": ("position", "kv_head", "d_head"),
    "hook_rot_q": ("position", "head", "d_head"),
    "hook_resid_post": ("position", "feature"),
    "hook_pattern": ("head", "query", "position"),
}


def _example_index(store: TraceStore, example: int | str) -> int:
    ids = store.example_ids
    if isinstance(example, str):
        if example not in ids:
            raise KeyError(f"store {store.path}: no example {example!r}")
        return ids.index(example)
    if not 0 <= example < len(ids):
        raise IndexError(f"store {store.path}: example index {example} out of range 0..{len(ids) - 1}")
    return int(example)


def tl_activations(store: TraceStore | str | os.PathLike, example: int | str) -> dict[str, torch.Tensor]:
    """One example's stored activations as {TL hook name: tensor with a batch dim of 1}, float32, unpadded.

    Layers a variable does not hold (all NaN: outside its layer selection) are left out, as are variables that
    are reductions rather than whole activations (see the module docstring).
    """
    store = store if isinstance(store, TraceStore) else TraceStore.open(store)
    b = _example_index(store, example)
    ds = store.dataset.isel(example=b)
    seq = int(ds["seq_len"].values)
    out: dict[str, torch.Tensor] = {}
    for name, var in ds.data_vars.items():
        site = var.attrs.get("tl_site")
        if not site:
            continue
        layout = _TL_LAYOUT.get(site.rsplit(".", 1)[-1])
        if layout is None or var.dims[:1] != ("layer",) or set(var.dims[1:]) != set(layout):
            continue  # a reduction stored under this hook's name, not the hook's activation
        if "query" in layout and not _every_position_queried(ds, seq):
            continue
        values = var.transpose("layer", *layout).isel(position=slice(0, seq))
        if "query" in layout:
            values = values.isel(query=slice(0, seq))
        array = np.asarray(values.values, dtype=np.float32)
        for layer, block in zip(var["layer"].values.tolist(), array):
            if np.isnan(block).all():
                continue
            out[site.format(layer=int(layer))] = torch.from_numpy(np.ascontiguousarray(block))[None]
    return out


def _every_position_queried(ds: Any, seq: int) -> bool:
    """Whether the query slots hold every position in order (only then are attention rows a full pattern)."""
    if "query_position" not in ds:
        return False
    q = np.asarray(ds["query_position"].values)
    return len(q) >= seq and bool((q[:seq] == np.arange(seq)).all())


def activation_cache(store: TraceStore | str | os.PathLike, example: int | str, model: Any = None) -> Any:
    """One example's stored activations as a TransformerLens `ActivationCache` (batch dim 1).

    `model`: the TransformerBridge / HookedTransformer some cache methods consult (e.g. for `cfg`); None is fine for
    indexing and stacking. Needs transformer-lens (the `tl` extra).
    """
    try:
        from transformer_lens import ActivationCache
    except ImportError as err:
        raise ImportError("activation_cache needs transformer-lens: pip install 'visblind[tl]' "
                          "(or use tl_activations, which needs no TransformerLens)") from err
    return ActivationCache(tl_activations(store, example), model, has_batch_dim=True)


@contextlib.contextmanager
def _no_pip_installs() -> Iterator[None]:
    """Stop TransformerLens from pip-installing torchvision while it boots a multimodal model.

    transformer-lens 4.3 (`model_bridge/sources/transformers/helpers._ensure_torchvision`, private) runs
    `pip install torchvision` when a processor fails to load; that upgrades torch in the user's environment.
    We disable it (test_tl_interop.py fails when the function moves) and point pip at nothing besides.
    """
    from transformer_lens.model_bridge.sources.transformers import helpers

    original = helpers._ensure_torchvision
    saved = {k: os.environ.get(k) for k in ("PIP_NO_INDEX", "PIP_FIND_LINKS")}
    helpers._ensure_torchvision = lambda: False
    os.environ.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=os.devnull)
    try:
        yield
    finally:
        helpers._ensure_torchvision = original
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def boot_bridge(path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """A TransformerLens `TransformerBridge` over a saved checkpoint folder (model + tokenizer), installing nothing.

    A processor the folder lacks (or that needs torchvision) is simply not attached; the bridge runs on
    the inputs a `ModelAdapter` builds.
    """
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:
        raise ImportError("boot_bridge needs transformer-lens: pip install 'visblind[tl]'") from err
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"boot_bridge: no config.json in {folder}")
    with _no_pip_installs():
        return TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)
