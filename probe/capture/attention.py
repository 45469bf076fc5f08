"""AttentionRecorder: exact attention statistics from inside the decoder's attention call.

While installed, every entry of transformers' attention registry (sdpa, flash_attention_*, ...)
is wrapped: a call from a selected decoder attention module first computes, from the model's
own post-RoPE queries and keys and the mask the call received, the attention share per
segment and the rows of chosen queries (float32 softmax), then runs the original kernel, so
the model's output is unchanged. Calls from any other module (vision tower, ...) pass through.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import AttentionInterface

from probe.capture import _attn_math
from probe.capture._attn_math import MaskSource
from probe.segments import Segment

SOURCES: tuple[str, ...] = ("last_prompt", "answer", "text")
_UNSUPPORTED_KWARGS = ("position_bias", "s_aux", "sinks")


@dataclass
class LayerAttention:
    """What one decoder layer's attention call produced for the current batch (padded coordinates).

    share: [batch, head, 3 (SOURCES), n_segments] float32, NaN where a source has no query
    rows: [batch, head, Q, seq] float32, NaN rows for absent queries (-1)
    keys: [batch, kv_head, seq, d_head], queries: [batch, head, seq, d_head] (model dtype, post-RoPE)
    """

    share: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    queries: torch.Tensor | None = None


class AttentionRecorder:
    """Context manager recording exact attention statistics of chosen decoder layers.

        rec = AttentionRecorder(adapter.attention_modules, layers=[0, 3])
        rec.set_batch(batch.segments, query_positions)
        with rec:
            model(**batch.inputs)
        rec.results[3].share  # [batch, head, 3, n_segments]

    Sequences longer than `blockwise_above` are processed `block_size` queries at a time; below it,
    only the queries a source averages over (and the selected rows) are formed, never visual queries.
    Logits are formed from q and k upcast to float32 (softmax in float32), so for a bf16 model the
    statistics are the exact attention of its bf16 q/k rather than the kernel's rounded one.
    With dropout active (training mode) they are the pre-dropout probabilities.
    """

    def __init__(
        self,
        attention_modules: Sequence[nn.Module],
        layers: Sequence[int],
        *,
        shares: bool = True,
        rows: bool = True,
        keys: bool = False,
        queries: bool = False,
        blockwise_above: int = 1024,
        block_size: int = 256,
    ) -> None:
        if blockwise_above < 1 or block_size < 1:
            raise ValueError(f"blockwise_above and block_size must be positive, got {blockwise_above}, {block_size}")
        bad = [i for i in layers if not 0 <= int(i) < len(attention_modules)]
        if bad:
            raise ValueError(f"layers {bad} do not exist among {len(attention_modules)} attention modules")
        self._by_module: dict[int, int] = {id(attention_modules[i]): int(i) for i in layers}
        self._modules = {int(i): attention_modules[i] for i in layers}
        self.shares, self.rows, self.keys, self.queries = shares, rows, keys, queries
        self.blockwise_above = blockwise_above
        self.block_size = block_size
        self.results: dict[int, LayerAttention] = {}
        self._segments: torch.Tensor | None = None
        self._query_positions: torch.Tensor | None = None
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._saved: dict[Any, Callable] | None = None

    # --- batch ---------------------------------------------------------------------
    def set_batch(self, segments: torch.Tensor, query_positions: torch.Tensor | None = None) -> None:
        """Segments [batch, seq] (Segment codes) and query_positions [batch, Q] (padded, -1 absent) of the next forward."""
        if segments.dim() != 2 or segments.is_floating_point():
            raise ValueError(f"segments must be an integer [batch, seq] tensor, got {tuple(segments.shape)} {segments.dtype}")
        if segments.numel() and not (0 <= int(segments.min()) and int(segments.max()) < len(Segment)):
            raise ValueError(f"segments must hold Segment codes 0..{len(Segment) - 1}, got {int(segments.min())}..{int(segments.max())}")
        if query_positions is None:
            query_positions = torch.empty((segments.shape[0], 0), dtype=torch.long)
        if query_positions.dim() != 2 or query_positions.shape[0] != segments.shape[0]:
            raise ValueError(
                f"query_positions must be [batch={segments.shape[0]}, Q], got {tuple(query_positions.shape)}"
            )
        if query_positions.numel() and int(query_positions.max()) >= segments.shape[1]:
            raise ValueError(f"query_positions reach {int(query_positions.max())}, beyond seq {segments.shape[1]}")
        self._segments = segments.long()
        self._query_positions = query_positions.long()
        self._on_device = {}
        self.results = {}

    def reset(self) -> None:
        """Forget recorded results (the batch stays set)."""
        self.results = {}

    # --- install -------------------------------------------------------------------
    def __enter__(self) -> "AttentionRecorder":
        if self._saved is not None:
            raise RuntimeError("AttentionRecorder is already installed")
        for layer, module in self._modules.items():
            impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
            if impl is not None and impl not in AttentionInterface._global_mapping:
                raise ValueError(
                    f"decoder layer {layer} runs attention {impl!r}; load the model with attn_implementation='sdpa' "
                    "(or a flash-attention kernel) to record attention"
                )
        mapping = AttentionInterface._global_mapping
        self._saved = dict(mapping)
        for name, fn in self._saved.items():
            mapping[name] = self._wrap(fn)
        return self

    def __exit__(self, *exc: object) -> None:
        mapping = AttentionInterface._global_mapping
        for name, fn in (self._saved or {}).items():
            mapping[name] = fn
        self._saved = None

    def _wrap(self, fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapped(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            layer = self._by_module.get(id(module))
            if layer is not None:
                bound = signature.bind(module, *args, **kwargs)
                call = {k: v for k, v in bound.arguments.items() if k != "kwargs"}
                call.update(bound.arguments.get("kwargs", {}))
                with torch.no_grad():
                    self._record(layer, module, call)
            return fn(module, *args, **kwargs)

        return wrapped

    # --- compute -------------------------------------------------------------------
    def _record(self, layer: int, module: nn.Module, call: dict[str, Any]) -> None:
        if self._segments is None:
            raise RuntimeError("AttentionRecorder: call set_batch(segments, query_positions) before the forward pass")
        if layer in self.results:
            raise RuntimeError(f"decoder layer {layer} attention ran twice in one batch; call reset() between forwards")
        query, key = call["query"], call["key"]
        batch, heads, q_len, _ = query.shape
        kv_len = key.shape[2]
        seq = self._segments.shape[1]
        if batch != self._segments.shape[0] or q_len != seq or kv_len != seq:
            raise RuntimeError(
                f"decoder layer {layer}: attention call has batch {batch}, {q_len} queries, {kv_len} keys but the batch "
                f"set has segments {tuple(self._segments.shape)}; the recorder needs one full forward (no cached prefix)"
            )
        if heads % key.shape[1]:
            raise RuntimeError(f"decoder layer {layer}: {heads} query heads not a multiple of {key.shape[1]} kv heads")
        for name in _UNSUPPORTED_KWARGS:
            if call.get(name) is not None:
                raise NotImplementedError(f"decoder layer {layer}: attention with {name!r} is not supported by the recorder")
        segments, qpos = self._device_batch(query.device)
        mask = self._mask_source(layer, module, call, segments)
        scaling = call.get("scaling")
        scaling = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
        block = self.block_size if seq > self.blockwise_above else None
        opts = dict(scaling=scaling, mask=mask, block=block, softcap=call.get("softcap"))
        out = LayerAttention()
        if self.shares:
            out.share = _attn_math.attention_shares(query, key, segments, **opts)
        if self.rows:
            out.rows = _attn_math.attention_rows(query, key, qpos, **opts)
        if self.keys:
            out.keys = key.detach().clone()
        if self.queries:
            out.queries = query.detach().clone()
        self.results[layer] = out

    def _device_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self._segments.to(device), self._query_positions.to(device))
        return self._on_device[device]

    def _mask_source(self, layer: int, module: nn.Module, call: dict[str, Any], segments: torch.Tensor) -> MaskSource:
        mask = call.get("attention_mask")
        key_valid = segments != Segment.PAD
        is_causal = call.get("is_causal")
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        window = call.get("sliding_window") or getattr(module, "sliding_window", None)
        if mask is None:
            return MaskSource(None, key_valid, causal, window)
        if not isinstance(mask, torch.Tensor):
            raise NotImplementedError(f"decoder layer {layer}: attention mask of type {type(mask).__name__} is not supported")
        if mask.dim() == 2:  # flash attention: [batch, seq] padding mask
            return MaskSource(None, key_valid & mask.to(torch.bool), causal, window)
        if mask.dim() == 4:
            return MaskSource(mask, key_valid, causal, window)
        raise NotImplementedError(f"decoder layer {layer}: attention mask of shape {tuple(mask.shape)} is not supported")
