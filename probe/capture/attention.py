"""AttentionRecorder: exact attention statistics from inside the decoder's attention call.

Installed through `attention_hook.attach` (a per-model registered attention function, so two
models in one process record independently). In a selected decoder layer's own attention call
it widens the values with the segments' one-hot columns, so the model's one kernel call
(sdpa, flash-attention) returns the layer output and every query's attention mass per segment
together; the output columns go back to the model unchanged. Rows of the few chosen queries,
and the keys/queries, are formed beside the call from the model's post-RoPE q/k and the mask
the call received (float32 softmax). Calls from other modules (vision tower, ...) pass through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from probe.capture import _attn_math
from probe.capture._attn_math import MaskSource
from probe.capture.attention_hook import Attachment, AttentionCall, Output, Proceed, attach
from probe.segments import Segment

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


@dataclass(frozen=True)
class _BatchOnDevice:
    """What the recorder's hook needs from the batch, on one device: computed before the forward, read by none."""

    segments: torch.Tensor  # [batch, seq] long
    qpos: torch.Tensor  # [batch, Q] long, -1 absent
    weights: torch.Tensor  # [batch, 3, seq] float32: source_weights
    onehot: torch.Tensor  # [batch, seq, len(codes)] bool: the mass columns
    placement: torch.Tensor  # [len(codes), n_segments] float64
    needed: torch.Tensor | None  # needed_positions(weights), for the second-pass fallback (dropout)


class AttentionRecorder:
    """Context manager recording exact attention statistics of chosen decoder layers.

        rec = AttentionRecorder(adapter.attention_modules, layers=[0, 3])
        rec.set_batch(batch.segments, query_positions)
        with rec:
            model(**batch.inputs)
        rec.results[3].share  # [batch, head, 3, n_segments]

    Shares come from the model's own kernel call (see the module docstring): exact in float32; in
    bfloat16 they carry the kernel's rounding of the probabilities and the mass columns (measured in
    tests/probe/test_attention_fused.py). With dropout active (training mode) a second pass gives the
    pre-dropout shares instead. Rows are formed beside the call from q and k upcast to float32, `block_size`
    queries at a time above `blockwise_above` positions, so for a bf16 model they are the exact
    attention of its bf16 q/k rather than the kernel's rounded one.
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
        widen_align: int | None = None,
    ) -> None:
        if blockwise_above < 1 or block_size < 1:
            raise ValueError(f"blockwise_above and block_size must be positive, got {blockwise_above}, {block_size}")
        bad = [i for i in layers if not 0 <= int(i) < len(attention_modules)]
        if bad:
            raise ValueError(f"layers {bad} do not exist among {len(attention_modules)} attention modules")
        self._attention_modules = list(attention_modules)
        self._layers = [int(i) for i in layers]
        self.shares, self.rows, self.keys, self.queries = shares, rows, keys, queries
        self.blockwise_above = blockwise_above
        self.block_size = block_size
        self.widen_align = widen_align  # head-width rounding of the widened call (None: _attn_math.widen_width's rule)
        self.results: dict[int, LayerAttention] = {}
        self._segments: torch.Tensor | None = None
        self._query_positions: torch.Tensor | None = None
        self._on_device: dict[torch.device, _BatchOnDevice] = {}
        self._attachment: Attachment | None = None
        self._codes: list[int] = []
        self._scratch: dict = {}  # the widened q/k/v of the current batch, reused layer to layer

    # --- batch ---------------------------------------------------------------------
    def set_batch(self, segments: torch.Tensor, query_positions: torch.Tensor | None = None,
                  host_segments: torch.Tensor | None = None) -> None:
        """Segments [batch, seq] (Segment codes) and query_positions [batch, Q] (padded, -1 absent) of the next forward.

        Everything the forward needs from the batch (segment codes, one-hot columns, per-source query weights) is
        computed here, once, on the segments' device: the forward itself then reads nothing on the host. Give the
        segments on the model's device; `host_segments` (the same on the CPU, when the caller has them) spares the
        one device->host read of the batch's codes.
        """
        if segments.dim() != 2 or segments.is_floating_point():
            raise ValueError(f"segments must be an integer [batch, seq] tensor, got {tuple(segments.shape)} {segments.dtype}")
        if query_positions is None:
            query_positions = torch.empty((segments.shape[0], 0), dtype=torch.long, device=segments.device)
        if query_positions.dim() != 2 or query_positions.shape[0] != segments.shape[0]:
            raise ValueError(
                f"query_positions must be [batch={segments.shape[0]}, Q], got {tuple(query_positions.shape)}"
            )
        host = (segments if host_segments is None else host_segments).cpu()
        if host.numel() and not (0 <= int(host.min()) and int(host.max()) < len(Segment)):
            raise ValueError(f"segments must hold Segment codes 0..{len(Segment) - 1}, got {int(host.min())}..{int(host.max())}")
        # one read per batch; skipped for positions on a device when the caller built them from `host_segments`
        checked = query_positions.device.type == "cpu" or host_segments is None
        if checked and query_positions.numel() and int(query_positions.max()) >= segments.shape[1]:
            raise ValueError(f"query_positions reach {int(query_positions.max())}, beyond seq {segments.shape[1]}")
        self._segments = segments.long()
        self._query_positions = query_positions.long()
        self._codes = _attn_math.mass_codes(host)
        self._on_device = {}
        self._prepare(segments.device)
        self._scratch = {}
        self.results = {}

    def _prepare(self, device: torch.device) -> _BatchOnDevice:
        """The batch's per-forward constants on `device` (computed once per batch and device)."""
        if device not in self._on_device:
            segments = self._segments.to(device)
            weights = _attn_math.source_weights(segments)
            fallback = self.shares and self._may_drop_out()
            self._on_device[device] = _BatchOnDevice(
                segments, self._query_positions.to(device), weights,
                _attn_math.code_onehot(segments, self._codes), _attn_math.code_placement(self._codes, device),
                _attn_math.needed_positions(weights) if fallback else None)
        return self._on_device[device]

    def _may_drop_out(self) -> bool:
        """Whether a recorded layer may run with dropout (training mode): the shares' second pass needs positions."""
        return any(m.training and float(getattr(m, "attention_dropout", 0.0) or 0.0) > 0
                   for i, m in enumerate(self._attention_modules) if i in self._layers)

    def reset(self) -> None:
        """Forget recorded results (the batch stays set)."""
        self.results = {}

    # --- install -------------------------------------------------------------------
    def __enter__(self) -> "AttentionRecorder":
        if self._attachment is not None:
            raise RuntimeError("AttentionRecorder is already installed")
        # outermost: the recorder measures the attention the model really runs, edits entered earlier included
        self._attachment = attach(self._attention_modules, self._hook, self._layers, outermost=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._attachment is not None:
            self._attachment.detach()
        self._attachment = None
        self._scratch = {}

    # --- compute -------------------------------------------------------------------
    def _hook(self, call: AttentionCall, proceed: Proceed) -> Output:
        layer, query, key = call.layer, call.query, call.key
        if self._segments is None:
            raise RuntimeError("AttentionRecorder: call set_batch(segments, query_positions) before the forward pass")
        if layer in self.results:
            raise RuntimeError(f"decoder layer {layer} attention ran twice in one batch; call reset() between forwards")
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
            if call.kwargs.get(name) is not None:
                raise NotImplementedError(f"decoder layer {layer}: attention with {name!r} is not supported by the recorder")
        dev = self._prepare(query.device)
        segments, qpos = dev.segments, dev.qpos
        out = LayerAttention()
        fused = self.shares and not call.kwargs.get("dropout")
        if fused:
            output, weights = self._fused(call, proceed, dev, out)
        else:
            output, weights = proceed(call)
        with torch.no_grad():
            if self.shares and not fused or self.rows:
                mask = self._mask_source(call, segments)
                scaling = call.scaling
                block = self.block_size if seq > self.blockwise_above else None
                opts = dict(scaling=scaling, mask=mask, block=block, softcap=call.kwargs.get("softcap"))
                if self.shares and not fused:
                    needed = dev.needed if dev.needed is not None else _attn_math.needed_positions(dev.weights)
                    out.share = _attn_math.attention_shares(query, key, segments, weights=dev.weights, pos=needed,
                                                            **opts)
                if self.rows:
                    out.rows = _attn_math.attention_rows(query, key, qpos, **opts)
            if self.keys:
                out.keys = key.detach().clone()
            if self.queries:
                out.queries = query.detach().clone()
        self.results[layer] = out
        return output, weights

    def _fused(self, call: AttentionCall, proceed: Proceed, dev: _BatchOnDevice, out: LayerAttention) -> Output:
        """Run the call with the mass columns appended to value; keep the masses, return the model's own columns."""
        dv, n = call.value.shape[-1], len(self._codes)
        # differentiable in q, k, v: under autograd the model's own output keeps its graph
        query, key, value = _attn_math.widen_for_mass(call.query, call.key, call.value, dev.segments, self._codes,
                                                      self._scratch, onehot=dev.onehot, align=self.widen_align)
        output, weights = proceed(call.replace(query=query, key=key, value=value, scaling=call.scaling))
        if len(self.results) + 1 == len(self._layers):  # the last recorded layer: free the buffers before the head
            self._scratch = {}
        if output.shape[-1] != value.shape[-1]:
            raise RuntimeError(
                f"decoder layer {call.layer}: attention returned width {output.shape[-1]} for values of width "
                f"{value.shape[-1]}; a hook attached after the recorder must keep the extra value columns"
            )
        out.share = _attn_math.shares_from_mass(output[..., dv : dv + n].detach(), dev.segments, self._codes,
                                                dev.weights, dev.placement)
        return output[..., :dv], weights

    def _mask_source(self, call: AttentionCall, segments: torch.Tensor) -> MaskSource:
        layer, module, mask = call.layer, call.module, call.attention_mask
        key_valid = segments != Segment.PAD
        is_causal = call.kwargs.get("is_causal")
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        window = call.kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        if mask is None:
            return MaskSource(None, key_valid, causal, window)
        if not isinstance(mask, torch.Tensor):
            raise NotImplementedError(f"decoder layer {layer}: attention mask of type {type(mask).__name__} is not supported")
        if mask.dim() == 2:  # flash attention: [batch, seq] padding mask
            return MaskSource(None, key_valid & mask.to(torch.bool), causal, window)
        if mask.dim() == 4:
            return MaskSource(mask, key_valid, causal, window)
        raise NotImplementedError(f"decoder layer {layer}: attention mask of shape {tuple(mask.shape)} is not supported")
