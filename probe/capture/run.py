"""The capture loop: examples in, a resumable TraceStore out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.capture.session import SOURCES, Capture
from probe.capture.spec import CaptureSpec
from probe.capture.vocab import VOCAB_GROUP, write_vocab
from probe.data.example import Example
from probe.data.manifest import read_manifest, read_manifest_skipping
from probe.models.base import BadExampleError, ModelAdapter
from probe.progress import progress_bar
from probe.provenance import provenance_attrs, weights_hash
from probe.segments import SEGMENT_NAMES, Segment
from probe.store import TraceStore, TraceStoreWriter, VariableSpec

TL_SITES = {
    "attn_share": "blocks.{layer}.attn.hook_pattern",
    "attn_pattern": "blocks.{layer}.attn.hook_pattern",
    "hook_rot_k": "blocks.{layer}.attn.hook_rot_k",
    "hook_rot_q": "blocks.{layer}.attn.hook_rot_q",
    "hook_resid_post": "blocks.{layer}.hook_resid_post",
    "hook_resid_post_pooled": "blocks.{layer}.hook_resid_post",
    "hook_resid_post_tokens": "blocks.{layer}.hook_resid_post",
}

_VISUAL_DIMS = {"projector_in": ("vtoken_in", "feature_in"), "projector_out": ("vtoken", "feature"),
                "vision_out": ("vpatch", "feature_vision")}


@dataclass(frozen=True)
class _Checked:
    """Examples that can be fed, their longest unpadded length and visual-unit count, and the rejects."""

    examples: list[Example]
    max_len: int
    max_units: int  # ModelAdapter.visual_units: sizes the projector / vision rows of the store
    skipped: list[tuple[str, str]]


def check_examples(adapter: ModelAdapter, examples: Sequence[Example], *, skip_bad: bool, progress: bool = True) -> _Checked:
    """Build every example's inputs once: catches bad input before anything is written, sizes the store."""
    good: list[Example] = []
    skipped: list[tuple[str, str]] = []
    max_len = max_units = 0
    for ex in progress_bar(examples, desc="checking inputs", unit="ex", disable=not progress, leave=False):
        try:
            inputs = adapter.build_inputs([ex], padding_side="right")
        except BadExampleError as err:
            if not skip_bad:
                raise
            skipped.append((ex.id, err.reason))
            continue
        good.append(ex)
        max_len = max(max_len, int((inputs.segments[0] != Segment.PAD).sum()))
        max_units = max(max_units, adapter.visual_units(inputs)[0])
    return _Checked(good, max_len, max_units, skipped)


def _label_names(examples: Sequence[Example]) -> list[str]:
    return sorted({k for ex in examples for k in ex.labels})


def _example_coords(batch: Sequence[Example], labels: list[str]) -> dict[str, list]:
    coords: dict[str, list] = {
        "lang": [ex.lang for ex in batch],
        "condition": [ex.condition for ex in batch],
        "question_type": [ex.question_type for ex in batch],
        "image_dependent": [bool(ex.image_dependent) for ex in batch],
    }
    for k in labels:
        coords[f"label_{k}"] = [str(ex.labels.get(k, "")) for ex in batch]
    return coords


def _variables(cap: Capture, first: dict[str, np.ndarray]) -> dict[str, VariableSpec]:
    """Store variables for what the spec asks (projector/vision ones only where the first row has them)."""
    spec, store_dt = cap.spec, cap.spec.dtype
    v: dict[str, VariableSpec] = {
        "seq_len": VariableSpec(("example",), "int32", -1),
        "segment_ids": VariableSpec(("example", "position"), "int8", -1),
        "query_position": VariableSpec(("example", "query"), "int32", -1),
        "n_vtoken": VariableSpec(("example",), "int32", -1),
    }
    if spec.attn_share:
        v["attn_share"] = VariableSpec(("example", "layer", "head", "source", "segment"), "float32", np.nan)
    if spec.attn_pattern:
        v["attn_pattern"] = VariableSpec(("example", "layer", "head", "query", "position"), "float32", np.nan)
    if spec.keys:
        v["hook_rot_k"] = VariableSpec(("example", "layer", "kv_head", "position", "d_head"), store_dt, np.nan)
    if spec.queries:
        v["hook_rot_q"] = VariableSpec(("example", "layer", "head", "position", "d_head"), store_dt, np.nan)
    if "query" in spec.resid:
        v["hook_resid_post"] = VariableSpec(("example", "layer", "query", "feature"), store_dt, np.nan)
    if "pooled" in spec.resid:
        v["hook_resid_post_pooled"] = VariableSpec(("example", "layer", "segment", "feature"), store_dt, np.nan)
    if "tokens" in spec.resid:
        v["hook_resid_post_tokens"] = VariableSpec(("example", "layer", "position", "feature"), store_dt, np.nan)
    for name, dims in _VISUAL_DIMS.items():
        if name in first:
            v[name] = VariableSpec(("example",) + dims, store_dt, np.nan)
    for name, var in v.items():
        site = TL_SITES.get(name)
        if site:
            v[name] = VariableSpec(var.dims, var.dtype, var.fill, {"tl_site": site})
    return v


def capture(
    model: ModelAdapter | str | Path,
    examples: Sequence[Example] | str | Path,
    out: str | Path,
    spec: CaptureSpec | None = None,
    *,
    lora_adapter: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    examples_per_chunk: int = 64,
) -> TraceStore:
    """Capture `examples` (a list or a JSONL manifest) from `model` (an adapter, a folder or a hub id) into a store.

    Resumable: run the same call again after an interruption and only missing examples are captured.
    """

    spec = spec or CaptureSpec()
    if isinstance(model, ModelAdapter):
        adapter, model_id = model, getattr(model.model.config, "_name_or_path", "") or type(model.model).__name__
    else:
        from probe.models.loading import load_model

        adapter, model_id = load_model(str(model), lora_adapter=str(lora_adapter) if lora_adapter else None), str(model)
    bad_lines: list[tuple[str, str]] = []  # with skip_bad, bad manifest lines are recorded like bad images
    if not isinstance(examples, Sequence) or isinstance(examples, (str, Path)):
        examples, bad_lines = read_manifest_skipping(examples) if skip_bad else (read_manifest(examples), [])
    adapter.model.eval()
    checked = check_examples(adapter, examples, skip_bad=skip_bad, progress=progress)
    checked.skipped[:0] = bad_lines
    if not checked.examples:
        raise ValueError("no example could be captured: " + "; ".join(f"{i}: {r}" for i, r in checked.skipped[:3]))
    cap = Capture(adapter, spec)
    labels = _label_names(checked.examples)
    attrs = provenance_attrs(
        model_id=model_id,
        weights_hash=weights_hash(adapter.model),
        adapter=adapter.name,
        lora_adapter=str(lora_adapter or ""),
        capture_spec=spec.to_json(),
        schema_version="1",
    )
    out = Path(out)
    writer: TraceStoreWriter | None = None
    if TraceStore.exists(out):
        writer = TraceStoreWriter.resume(out, attrs=attrs)
    done = writer.done_ids() if writer is not None else set()
    todo = [ex for ex in checked.examples if ex.id not in done]
    bar = progress_bar(total=len(checked.examples), initial=len(checked.examples) - len(todo), desc="capture",
               unit="ex", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), spec.batch_size):
        batch_examples = todo[start : start + spec.batch_size]
        batch = adapter.build_inputs(batch_examples, padding_side=spec.padding_side)
        batch = batch.to(next(adapter.model.parameters()).device)
        rows = cap.collect(batch, _forward(cap, batch), n_positions=checked.max_len)
        if writer is None:
            first_units = adapter.visual_units(batch)[0]
            writer = _create_writer(out, cap, rows[0], first_units, checked, labels, attrs, examples_per_chunk)
        writer.append(
            [ex.id for ex in batch_examples],
            _example_coords(batch_examples, labels),
            _stack_rows(rows, writer.variables),
        )
        bar.update(len(batch_examples))
    bar.close()
    if writer is None:  # everything was already captured
        store = TraceStore.open(out)
    else:
        for example_id, reason in checked.skipped:
            writer.record_skipped(example_id, reason)
        store = writer.close()
    if spec.vocab and not (out / VOCAB_GROUP).exists():
        write_vocab(adapter, out, spec.dtype)
    return store


@torch.inference_mode()
def _forward(cap: Capture, batch) -> dict:
    with cap.recording(batch):
        with cap.envoy.trace(**batch.inputs):
            saved = cap.tap(batch)
    return saved


def _create_writer(out: Path, cap: Capture, first: dict[str, np.ndarray], first_units: int, checked: _Checked,
                   labels: list[str], attrs: dict[str, str], examples_per_chunk: int) -> TraceStoreWriter:
    """Create the store, sizing unlabelled dims from the checked examples and one captured row."""
    adapter, spec = cap.adapter, cap.spec
    coords = {
        "layer": list(cap.layers),
        "head": list(range(adapter.num_heads)),
        "kv_head": list(range(adapter.num_kv_heads)),
        "source": list(SOURCES),
        "segment": list(SEGMENT_NAMES),
        "query": list(spec.query_slots),
        "position": list(range(checked.max_len)),
    }
    sizes = {"feature": adapter.hidden_size}
    for name, (tok_dim, feat_dim) in _VISUAL_DIMS.items():
        if name in first:
            # rows per visual unit (e.g. 4 before a 2x2 merger, 17/16 with a CLS token), scaled to the largest example
            sizes[tok_dim] = int(np.ceil(first[name].shape[0] / max(first_units, 1) * checked.max_units))
            sizes[feat_dim] = int(first[name].shape[1])
    for name in ("hook_rot_k", "hook_rot_q"):
        if name in first:
            sizes["d_head"] = int(first[name].shape[-1])
    return TraceStoreWriter.create(
        out,
        variables=_variables(cap, first),
        coords=coords,
        sizes=sizes,
        example_coords={"lang": "str", "condition": "str", "question_type": "str", "image_dependent": "bool",
                        **{f"label_{k}": "str" for k in labels}},
        attrs=attrs,
        examples_per_chunk=examples_per_chunk,
    )


def _stack_rows(rows: list[dict[str, np.ndarray]], variables: dict[str, VariableSpec]) -> dict[str, np.ndarray]:
    """Batch per-example rows into arrays, padding variable-length visual rows with NaN (the writer pads the rest)."""
    out: dict[str, np.ndarray] = {}
    for name, var in variables.items():
        values = [r[name] for r in rows]
        if name in _VISUAL_DIMS:
            width = max(v.shape[0] for v in values)
            values = [np.pad(v, ((0, width - v.shape[0]), (0, 0)), constant_values=np.nan) for v in values]
        out[name] = np.stack(values)
    return out
