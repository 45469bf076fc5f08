"""The capture loop: examples in, a resumable TraceStore out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from probe.capture.recordables import tl_sites
from probe.capture.session import SOURCES, Capture
from probe.capture.spec import CaptureSpec
from probe.capture.vocab import VOCAB_GROUP, write_vocab
from probe.data.example import Example
from probe.data.manifest import read_manifest
from probe.models.base import BadExampleError, ModelAdapter
from probe.provenance import provenance_attrs, weights_hash
from probe.segments import SEGMENT_NAMES, Segment
from probe.store import TraceStore, TraceStoreWriter, VariableSpec

TL_SITES = tl_sites()


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
    for ex in tqdm(examples, desc="checking inputs", unit="ex", disable=not progress, leave=False):
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
        "group": [_group(ex) for ex in batch],
    }
    for k in labels:
        coords[f"label_{k}"] = [str(ex.labels.get(k, "")) for ex in batch]
    return coords


def _group(ex: Example) -> str:
    """The independent unit of an example: its manifest `group`, else its image path, else its id."""
    if ex.group is not None:
        return str(ex.group)
    return str(ex.image) if isinstance(ex.image, (str, Path)) else ex.id


def _variables(cap: Capture) -> dict[str, VariableSpec]:
    """Store variables of the recordables the spec asks for (with their TransformerLens hook name)."""
    return {
        r.name: VariableSpec(("example",) + r.dims, r.store_dtype(cap.spec), r.fill,
                             {"tl_site": r.tl_hook} if r.tl_hook else {})
        for r in cap.recordables
    }


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
    if not isinstance(examples, Sequence) or isinstance(examples, (str, Path)):
        examples = read_manifest(examples)
    adapter.model.eval()
    checked = check_examples(adapter, examples, skip_bad=skip_bad, progress=progress)
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
    bar = tqdm(total=len(checked.examples), initial=len(checked.examples) - len(todo), desc="capture",
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
    """Create the store: labelled dims from the adapter and spec, growing dims by each recordable's rule,
    the rest from one captured row."""
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
    sizes: dict[str, int] = {}
    for rec in cap.recordables:
        row = np.asarray(first[rec.name])
        for axis, dim in enumerate(rec.dims):
            rule = rec.grows.get(dim)
            if dim in coords or dim in sizes:
                continue
            if rule is None:
                sizes[dim] = int(row.shape[axis])
            elif rule.startswith("visual:"):
                # rows per visual unit (e.g. 4 before a 2x2 merger, 17/16 with a CLS token), scaled to the largest example
                sizes[dim] = int(np.ceil(row.shape[axis] / max(first_units, 1) * checked.max_units))
            else:
                raise ValueError(f"recordable {rec.name!r}: unknown size rule {rule!r} for dim {dim!r}")
    return TraceStoreWriter.create(
        out,
        variables=_variables(cap),
        coords=coords,
        sizes=sizes,
        example_coords={"lang": "str", "condition": "str", "question_type": "str", "image_dependent": "bool",
                        "group": "str", **{f"label_{k}": "str" for k in labels}},
        attrs=attrs,
        examples_per_chunk=examples_per_chunk,
    )


def _stack_rows(rows: list[dict[str, np.ndarray]], variables: dict[str, VariableSpec]) -> dict[str, np.ndarray]:
    """Batch per-example rows into arrays, padding rows shorter along a dim with the fill (the writer pads to the store)."""
    out: dict[str, np.ndarray] = {}
    for name, var in variables.items():
        values = [np.asarray(r[name]) for r in rows]
        shape = np.max([v.shape for v in values], axis=0) if values[0].ndim else ()
        values = [np.pad(v, [(0, int(n) - k) for n, k in zip(shape, v.shape)], constant_values=var.fill_value)
                  if v.ndim else v for v in values]
        out[name] = np.stack(values)
    return out
