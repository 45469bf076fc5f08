"""One capture session: attention recorder + nnsight taps over a batch, results in store layout."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from nnsight import NNsight

from probe.capture.attention import AttentionRecorder
from probe.capture.reduce import query_positions, remap_positions, split_rows, to_unpadded, unpadded_index
from probe.capture.spec import CaptureSpec
from probe.capture.taps import plan_taps, tap
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment

SOURCES = ("last_prompt", "answer", "text")


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
        n = adapter.num_layers
        self.attn_layers = spec.resolve_layers(spec.layers, n)
        self.kq_layers = spec.resolve_layers(spec.kq_layers, n) if (spec.keys or spec.queries) else ()
        self.resid_layers = spec.resolve_layers(spec.resid_layers, n) if spec.resid else ()
        self.layers = tuple(sorted(set(self.attn_layers) | set(self.kq_layers) | set(self.resid_layers)))
        self.plan = plan_taps(adapter, spec)
        record_layers = sorted(set(self.attn_layers if (spec.attn_share or spec.attn_pattern) else ()) | set(self.kq_layers))
        self.recorder = AttentionRecorder(
            adapter.attention_modules,
            record_layers,
            shares=spec.attn_share,
            rows=spec.attn_pattern,
            keys=spec.keys,
            queries=spec.queries,
            blockwise_above=spec.blockwise_above,
            block_size=spec.block_size,
        )
        self._qpos: torch.Tensor | None = None

    @contextmanager
    def recording(self, batch: ModelInputs) -> Iterator["Capture"]:
        """Install the attention recorder for one forward pass over `batch`."""
        self._qpos = query_positions(batch.segments, self.spec.max_answer_tokens)
        self.recorder.reset()
        self.recorder.set_batch(batch.segments, self._qpos)
        with self.recorder:
            yield self

    def tap(self, batch: ModelInputs) -> dict[Any, Any]:
        """Request the module taps; call inside the trace (an empty invoke when you edit too)."""
        if self._qpos is None:
            raise RuntimeError("call tap() inside `with capture.recording(batch)`")
        return tap(self.envoy, self.adapter, self.spec, self.plan, batch.segments, self._qpos)

    @torch.inference_mode()
    def run(self, batch: ModelInputs) -> list[dict[str, np.ndarray]]:
        """Forward `batch` once and return per-example arrays in store layout."""
        with self.recording(batch):
            with self.envoy.trace(**batch.inputs):
                saved = self.tap(batch)
            return self.collect(batch, saved)

    def collect(self, batch: ModelInputs, saved: dict[Any, Any], n_positions: int | None = None) -> list[dict[str, np.ndarray]]:
        """Per-example arrays (positions unpadded, padded to `n_positions` with NaN / -1)."""
        segs = batch.segments.cpu()
        index = unpadded_index(segs)
        lengths = [int(ix.numel()) for ix in index]
        size = n_positions or max(lengths)
        qpos = self._qpos.cpu() if self._qpos is not None else query_positions(segs, self.spec.max_answer_tokens)
        attn = self.recorder.results
        n_visual = [int((row == Segment.VISUAL).sum()) for row in segs]
        units = self.adapter.visual_units(batch)
        per_flat: dict[str, list[torch.Tensor]] = {}
        for name in ("vision_out", "projector_in", "projector_out"):
            if name in saved:
                per_flat[name] = _split_per_example(saved[name], units, len(lengths))
        out: list[dict[str, np.ndarray]] = []
        for b, ix in enumerate(index):
            row: dict[str, np.ndarray] = {}
            seg_row = to_unpadded(segs[b].to(torch.float32), ix, 0, size, fill=-1).to(torch.int8)
            row["seq_len"] = np.int32(lengths[b])
            row["segment_ids"] = seg_row.numpy()
            row["query_position"] = remap_positions(qpos[b], ix).to(torch.int32).numpy()
            if self.spec.attn_share:
                row["attn_share"] = self._by_layer(self.attn_layers, lambda i: attn[i].share[b])
            if self.spec.attn_pattern:
                row["attn_pattern"] = self._by_layer(self.attn_layers, lambda i: to_unpadded(attn[i].rows[b].float().cpu(), ix, -1, size))
            if self.spec.keys:
                row["hook_rot_k"] = self._by_layer(self.kq_layers, lambda i: to_unpadded(attn[i].keys[b].float().cpu(), ix, 1, size))
            if self.spec.queries:
                row["hook_rot_q"] = self._by_layer(self.kq_layers, lambda i: to_unpadded(attn[i].queries[b].float().cpu(), ix, 1, size))
            if "query" in self.spec.resid:
                row["hook_resid_post"] = self._by_layer(self.resid_layers, lambda i: saved[("resid_query", i)][b])
            if "pooled" in self.spec.resid:
                row["hook_resid_post_pooled"] = self._by_layer(self.resid_layers, lambda i: saved[("resid_pooled", i)][b])
            if "tokens" in self.spec.resid:
                row["hook_resid_post_tokens"] = self._by_layer(
                    self.resid_layers, lambda i: to_unpadded(saved[("resid_tokens", i)][b].cpu(), ix, 0, size)
                )
            for name, parts in per_flat.items():
                row[name] = parts[b].cpu().numpy()
            row["n_vtoken"] = np.int32(n_visual[b])
            out.append(row)
        return out

    def _by_layer(self, chosen: tuple[int, ...], get: Any) -> np.ndarray:
        """Stack one value per store layer (`self.layers`); NaN at layers this variable skips."""
        parts = {i: get(i).detach().float().cpu() for i in chosen}
        nan = torch.full_like(next(iter(parts.values())), float("nan"))
        return torch.stack([parts.get(i, nan) for i in self.layers]).numpy()


def _split_per_example(value: torch.Tensor, units: list[int], batch: int) -> list[torch.Tensor]:
    """One [rows, d] tensor per example from a projector / vision tensor (`units`: ModelAdapter.visual_units)."""
    value = value.detach()
    # one row per example (e.g. a CLIP tower's [batch, 1 + patches, d]): rows per unit need not be whole
    if value.dim() == 3 and value.shape[0] == batch and len(set(units)) == 1:
        return [value[b] for b in range(batch)]
    return split_rows(value, units)
