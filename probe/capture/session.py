"""One capture session: attention recorder + nnsight taps over a batch, results in store layout."""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch
from nnsight import NNsight

from probe.capture.attention import AttentionRecorder, LayerAttention
from probe.capture.reduce import query_positions, remap_positions, to_unpadded, unpadded_index
from probe.capture.recordables import ATTENTION, selected
from probe.capture.spec import CaptureSpec
from probe.capture.taps import plan_taps, tap
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment
from probe.vocab import QUERY_SOURCES as SOURCES  # noqa: F401  (one definition, probe.vocab; re-exported for capture.run)



class Capture:
    """Records what a `CaptureSpec` asks for from an adapter's model, batch by batch.

    From a notebook, alongside your own nnsight edits in one forward pass:

        cap = Capture(adapter, spec)
        batch = adapter.build_inputs(examples)
        with cap.recording(batch), cap.envoy.trace() as tracer:
            with tracer.invoke(**batch.inputs):
                cap.envoy.model.language_model.layers[1].output[:] *= 0.5   # your edit
            with tracer.invoke():                                             # whole batch
                saved = cap.tap(batch)
        rows = cap.collect(batch, saved)   # per-example numpy arrays in TraceStore layout
    """

    def __init__(self, adapter: ModelAdapter, spec: CaptureSpec, envoy: NNsight | None = None) -> None:
        self.adapter = adapter
        self.spec = spec
        self.envoy = envoy if envoy is not None else NNsight(adapter.model)
        # a quantity read at a site the family lacks (DeepStack rows outside Qwen3-VL) is not recorded
        self.recordables = [r for r in selected(spec) if r.site is None or r.site in adapter.sites]
        self.layers = spec.resolve_layers(spec.layers, adapter.num_layers)
        self.plan = plan_taps(adapter, self.recordables, self.layers)
        attention = {r.name for r in self.recordables if r.source == ATTENTION}
        self.recorder = AttentionRecorder(
            adapter.attention_modules,
            self.layers if attention else (),
            shares="attn_share" in attention,
            rows="attn_pattern" in attention,
            keys="hook_rot_k" in attention,
            queries="hook_rot_q" in attention,
            blockwise_above=spec.blockwise_above,
            block_size=spec.block_size,
        )
        self._qpos: torch.Tensor | None = None  # query positions of the batch being recorded, on its device
        self._qpos_host: torch.Tensor | None = None

    @contextmanager
    def recording(self, batch: ModelInputs, host_batch: ModelInputs | None = None) -> Iterator["Capture"]:
        """Install the attention recorder for one forward pass over `batch`.

        `host_batch`: the same batch on the CPU (as built, before moving it to the model's device), when the caller
        has it: the batch's bookkeeping is then computed from it without reading the device.
        """
        host = (batch if host_batch is None else host_batch).segments.cpu()
        self._qpos_host = query_positions(host, self.spec.max_answer_tokens)
        self._qpos = _to(self._qpos_host, batch.segments.device)
        self.recorder.reset()
        self.recorder.set_batch(batch.segments, self._qpos, host_segments=host)
        with self.recorder:
            yield self

    def tap(self, batch: ModelInputs) -> dict[Any, Any]:
        """Request the module taps; call inside the trace (an empty invoke when you edit too)."""
        if self._qpos is None:
            raise RuntimeError("call tap() inside `with capture.recording(batch)`")
        return tap(self.envoy, self.adapter, self.recordables, self.plan, batch.segments, self._qpos)

    @torch.inference_mode()
    def run(self, batch: ModelInputs) -> list[dict[str, np.ndarray]]:
        """Forward `batch` once and return per-example arrays in store layout."""
        with self.recording(batch):
            with self.envoy.trace(**batch.inputs):
                saved = self.tap(batch)
            return self.collect(batch, saved)

    def collect(self, batch: ModelInputs, saved: dict[Any, Any], n_positions: int | None = None,
                host_batch: ModelInputs | None = None) -> list[dict[str, np.ndarray]]:
        """Per-example arrays (positions unpadded, padded to `n_positions` with NaN / -1), one per selected recordable."""
        return self.gather(batch, saved, host_batch).rows(n_positions)

    def gather(self, batch: ModelInputs, saved: dict[Any, Any], host_batch: ModelInputs | None = None) -> "Gathered":
        """Start moving everything the last forward recorded to the host, in one transfer per device; waits for nothing.

        On CUDA the copies go into one pinned buffer, non-blocking, behind the forward's kernels; `Gathered.rows`
        waits for them (once). `host_batch`: the batch on the CPU, if the caller has it (else it is copied back).
        """
        names, tensors = [], []
        for layer, res in self.recorder.results.items():
            for attr in ("share", "rows", "keys", "queries"):
                if getattr(res, attr) is not None:
                    names.append(("attention", layer, attr))
                    tensors.append(getattr(res, attr))
        for key, value in saved.items():
            if isinstance(value, torch.Tensor):
                names.append(("saved", key))
                tensors.append(value)
        moved, ready = to_host(tensors)
        attention: dict[int, LayerAttention] = {i: LayerAttention() for i in self.recorder.results}
        host_saved = dict(saved)
        for name, t in zip(names, moved):
            if name[0] == "attention":
                setattr(attention[name[1]], name[2], t)
            else:
                host_saved[name[1]] = t
        if host_batch is None:
            host_batch = batch if batch.segments.device.type == "cpu" else batch.to("cpu")
        qpos = getattr(self, "_qpos_host", None)
        if qpos is None or qpos.shape[0] != host_batch.segments.shape[0]:
            qpos = query_positions(host_batch.segments, self.spec.max_answer_tokens)
        return Gathered(self, host_batch, host_saved, attention, qpos, ready)


@dataclass
class Gathered:
    """One batch's recorded tensors on their way to the host (from `Capture.gather`)."""

    capture: Capture
    batch: ModelInputs  # on the CPU
    saved: dict[Any, Any]
    attention: dict[int, LayerAttention]
    qpos: torch.Tensor
    ready: list[Any]  # CUDA events the host copies complete at

    def rows(self, n_positions: int | None = None) -> list[dict[str, np.ndarray]]:
        """Per-example arrays in store layout (waits for the transfer; safe to call from another thread)."""
        for event in self.ready:
            event.synchronize()
        cap = self.capture
        view = BatchView(cap.adapter, self.batch, self.saved, self.attention, cap.layers, self.qpos, n_positions)
        return [{r.name: r.row(view, b) for r in cap.recordables} for b in range(len(view.lengths))]


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without waiting (pinned, non-blocking on CUDA)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def to_device(batch: ModelInputs, device: torch.device | str) -> ModelInputs:
    """`batch.to(device)` without waiting for the device (pinned, non-blocking copies on CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return batch.to(device)
    moved = {k: (_to(v, device) if isinstance(v, torch.Tensor) else v) for k, v in batch.inputs.items()}
    labels = _to(batch.labels, device) if batch.labels is not None else None
    return replace(batch, inputs=moved, segments=_to(batch.segments, device), labels=labels)


def to_host(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[Any]]:
    """Host copies of `tensors` and the CUDA events they are complete at: one pinned buffer per device.

    CPU tensors come back as they are (detached). Copies from CUDA are non-blocking into slices of one pinned
    buffer, so the host waits once per batch (event.synchronize()), not once per tensor.
    """
    out = [t.detach() for t in tensors]
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(out):
        if t.device.type != "cpu":
            by_device[t.device].append(i)
    events = []
    for device, idx in by_device.items():
        cuda = device.type == "cuda"
        offsets, total = [], 0
        for i in idx:
            offsets.append(total)
            total += -(-out[i].numel() * out[i].element_size() // 16) * 16  # 16-byte aligned slices
        buffer = torch.empty(total, dtype=torch.uint8, pin_memory=cuda)
        for i, off in zip(idx, offsets):
            t = out[i]
            dst = buffer[off : off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
            dst.copy_(t, non_blocking=cuda)
            out[i] = dst
        if cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
    return out, events


class BatchView:
    """What a recordable's `row` reads for one batch: unpadding, the selected layers, tap and attention results."""

    def __init__(self, adapter: ModelAdapter, batch: ModelInputs, saved: dict[Any, Any], attention: dict[int, Any],
                 layers: tuple[int, ...], qpos: torch.Tensor, n_positions: int | None) -> None:
        self.adapter, self.batch, self.saved, self.attention, self.layers = adapter, batch, saved, attention, layers
        self.segments = batch.segments.cpu()
        self.index = unpadded_index(self.segments)
        self.lengths = [int(ix.numel()) for ix in self.index]
        self.size = n_positions or max(self.lengths)
        self.qpos = qpos
        self.n_visual = [int((row == Segment.VISUAL).sum()) for row in self.segments]
        self._visual: dict[Any, list[torch.Tensor]] = {}
        self._layout: list[Any] | None = None

    def token_ids(self, b: int) -> np.ndarray:
        """Example `b`'s input ids at its unpadded positions, -1 beyond: [size] int64."""
        ids = self.batch.inputs["input_ids"][b].cpu()
        return to_unpadded(ids, self.index[b], 0, self.size, fill=-1).numpy().astype(np.int64)

    def token_strings(self, b: int) -> np.ndarray:
        """Example `b`'s tokens decoded one by one (as the vocab group decodes them), "" beyond: [size] str."""
        ids = self.token_ids(b)
        n = self.lengths[b]
        words = self.adapter.processor.tokenizer.batch_decode([[int(i)] for i in ids[:n]])
        return np.array(words + [""] * (len(ids) - n), dtype=object).astype(np.dtypes.StringDType())

    def unpad(self, x: torch.Tensor, b: int, position_axis: int | None, fill: float = float("nan")) -> torch.Tensor:
        """Example `b`'s tensor with padding removed along `position_axis` (None: no position axis), on the CPU."""
        x = x.detach().float().cpu()
        return x if position_axis is None else to_unpadded(x, self.index[b], position_axis, self.size, fill=fill)

    def query_positions(self, b: int) -> np.ndarray:
        return remap_positions(self.qpos[b], self.index[b]).to(torch.int32).numpy()

    def by_layer(self, get: Any) -> np.ndarray:
        """One value per selected layer, stacked along a leading layer axis."""
        return torch.stack([get(i).detach().float().cpu() for i in self.layers]).numpy()

    def visual(self, name: str, site: str, layer: int | None = None) -> list[torch.Tensor]:
        """Per example [rows, d] of the tap `name` at visual site `site` (at decoder `layer` for a per-layer site),
        in the order the decoder sees the tokens."""
        key = name if layer is None else (name, layer)
        if key not in self._visual:
            self._visual[key] = self.adapter.visual_rows(site, self.saved[key], self.batch)
        return self._visual[key]

    @property
    def layout(self) -> list[Any]:
        """Per example, the VisualLayout of its visual positions (tile, grid place, boxes, image size)."""
        if self._layout is None:
            self._layout = self.adapter.visual_layout(self.batch)
        return self._layout
