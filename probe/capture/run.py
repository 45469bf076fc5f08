"""The capture loop: examples in, a resumable TraceStore out."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec

import numpy as np
import torch

from probe.capture.recordables import tl_sites
from probe.capture.overlap import Behind
from probe.capture.session import SOURCES, Capture, Gathered, to_device
from probe.capture.spec import CaptureSpec
from probe.capture.vocab import VOCAB_GROUP, write_vocab
from probe.data.example import Example
from probe.data.manifest import read_manifest, read_manifest_skipping
from probe.models.base import BadExampleError, ModelAdapter, ModelInputs
from probe.models.limits import check_fits
from probe.progress import progress_bar
from probe.provenance import checkpoint_weights_hash, provenance_attrs, weights_hash
from probe.segments import SEGMENT_NAMES, Segment
from probe.store import SCHEMA_VERSION, NotAStoreError, TraceStore, TraceStoreWriter, VariableSpec, check_schema_version
from probe.store import lock as store_lock
from probe.vocab import example_coords

TL_SITES = tl_sites()


@dataclass(frozen=True)
class _Checked:
    """Examples that can be fed, the most any of them needs of each growing dim, and the rejects.

    needs: size rule -> largest need ("position": unpadded length; "visual:<site>": rows at a visual site).
    """

    examples: list[Example]
    needs: dict[str, int]
    skipped: list[tuple[str, str]]

    @property
    def max_len(self) -> int:
        return self.needs.get("position", 0)


def example_needs(adapter: ModelAdapter, inputs: ModelInputs) -> dict[str, int]:
    """What one example (a batch of one) needs of each growing store dim, from its inputs alone."""
    needs = {"position": int((inputs.segments[0] != Segment.PAD).sum())}
    needs.update({f"visual:{site}": int(rows[0]) for site, rows in adapter.visual_row_counts(inputs).items()})
    return needs


def check_examples(adapter: ModelAdapter, examples: Sequence[Example], *, skip_bad: bool, progress: bool = True,
                   limits: dict[str, tuple[str, int]] | None = None, out: Path | None = None) -> _Checked:
    """Build every example's inputs once: catches bad input before anything is written, sizes the store.

    `limits`: size rule -> (dim, size) of the store being resumed (fixed at its creation); an example needing more is bad.
    """
    good: list[Example] = []
    skipped: list[tuple[str, str]] = []
    most: dict[str, int] = {}
    for ex in progress_bar(examples, desc="checking inputs", unit="ex", disable=not progress, leave=False):
        try:
            inputs = adapter.build_inputs([ex], padding_side="right")
            check_fits(adapter, inputs)  # longer than the model's positions, or more memory than is free
            needs = example_needs(adapter, inputs)
            for rule, (dim, size) in (limits or {}).items():
                if needs.get(rule, 0) > size:
                    what = (f"{needs[rule]} tokens, more than the {size} positions" if rule == "position" else
                            f"{needs[rule]} rows at {rule.split(':', 1)[1]}, more than the {size} ({dim!r})")
                    raise BadExampleError(ex.id, f"{what} of store {out} (sizes are fixed when a store is created): "
                                                 "capture it into a new store")
        except BadExampleError as err:
            if not skip_bad:
                raise
            skipped.append((ex.id, err.reason))
            continue
        good.append(ex)
        for rule, n in needs.items():
            most[rule] = max(most.get(rule, 0), n)
    return _Checked(good, most, skipped)


def _label_names(examples: Sequence[Example]) -> list[str]:
    return sorted({k for ex in examples for k in ex.labels})


def _example_coords(batch: Sequence[Example], labels: list[str]) -> dict[str, list]:
    coords = example_coords(batch)  # the shared fields (probe.vocab), group = the independent unit
    for k in labels:
        coords[f"label_{k}"] = [str(ex.labels.get(k, "")) for ex in batch]
    return coords


def _variables(cap: Capture) -> dict[str, VariableSpec]:
    """Store variables of the recordables the spec asks for (with their TransformerLens hook name)."""
    return {
        r.name: VariableSpec(("example",) + r.dims, r.store_dtype(cap.spec), r.fill,
                             {"tl_site": r.tl_hook} if r.tl_hook else {})
        for r in cap.recordables
    }


_P = ParamSpec("_P")


@dataclass(frozen=True)
class Loaded:
    """A model ready to capture from, with what the store records about it."""

    adapter: ModelAdapter
    model_id: str
    digest: str  # weights hash

    @classmethod
    def of(cls, model: "ModelAdapter | str | Path | Loaded", *, lora_adapter: str | Path | None = None,
           device: str | torch.device | None = None, device_map: str | dict | None = None) -> "Loaded":
        """An adapter as given, or the model loaded from a folder / hub id (with `device` / `device_map`)."""
        if isinstance(model, Loaded):
            return model
        if isinstance(model, ModelAdapter):
            model_id = getattr(model.model.config, "_name_or_path", "") or type(model.model).__name__
            loaded = cls(model, model_id, weights_hash(model.model))
        else:
            from probe.models.loading import load_model

            adapter = load_model(str(model), lora_adapter=str(lora_adapter) if lora_adapter else None,
                                 device=device or "cpu", device_map=device_map)
            digest = checkpoint_weights_hash(adapter.model, [model] + ([lora_adapter] if lora_adapter else []))
            loaded = cls(adapter, str(model), digest)
        loaded.adapter.model.eval()
        return loaded


def _launched(local: Callable[_P, TraceStore]) -> Callable[_P, TraceStore]:
    """`local` when this process runs alone, the data-parallel capture under torchrun / accelerate launch."""

    @functools.wraps(local)
    def capture(*args: _P.args, **kwargs: _P.kwargs) -> TraceStore:
        from probe.capture.distributed import data_parallel_capture, world

        return (data_parallel_capture if world().size > 1 else local)(*args, **kwargs)

    return capture


def capture_local(
    model: ModelAdapter | str | Path | Loaded,
    examples: Sequence[Example] | str | Path,
    out: str | Path,
    spec: CaptureSpec | None = None,
    *,
    lora_adapter: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    examples_per_chunk: int = 64,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    allow_outside_paths: bool = True,
) -> TraceStore:
    """`capture` in this process alone, whatever the launcher's world size."""
    spec = spec or CaptureSpec()
    out = Path(out)
    resuming = _check_target(out)  # before loading anything
    examples, bad_lines, manifest = read_examples(examples, skip_bad, allow_outside_paths)
    if not examples and not bad_lines and not resuming:
        raise ValueError(f"no example to capture: {f'manifest {manifest}' if manifest else 'the example list'} holds none")
    loaded = Loaded.of(model, lora_adapter=lora_adapter, device=device, device_map=device_map)
    cap = Capture(loaded.adapter, spec)
    attrs = provenance_attrs(
        model_id=loaded.model_id,
        weights_hash=loaded.digest,
        adapter=loaded.adapter.name,
        lora_adapter=str(lora_adapter or ""),
        capture_spec=spec.to_json(),
        manifest=manifest,
        schema_version=SCHEMA_VERSION,
    )
    writer = TraceStoreWriter.resume(out, attrs=attrs) if resuming else None
    try:
        store = _capture_into(out, writer, cap, examples, attrs, skip_bad=skip_bad, progress=progress,
                              examples_per_chunk=examples_per_chunk, bad_lines=bad_lines)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if spec.vocab and VOCAB_GROUP not in store.groups():
        write_vocab(loaded.adapter, out, spec.dtype)
    return store


capture = _launched(capture_local)
capture.__name__ = capture.__qualname__ = "capture"
capture.__doc__ = """Capture `examples` (a list or a JSONL manifest) from `model` (an adapter, a folder or a hub id) into a store.

    Resumable: run the same call again after an interruption and only missing examples are captured
    (the processor never sees the captured ones). A store is resumed by the same weights (hash), adapter
    and spec, whatever path the model is given by. Under torchrun / accelerate launch (WORLD_SIZE > 1)
    each process captures its share and the shards are merged (`probe.capture.distributed`).
    `device` / `device_map` go to `load_model` when the model is given by path. `allow_outside_paths=False` (the
    command line's default) refuses a manifest's images outside its folder. Signature: `capture_local`'s.
    """


def read_examples(examples: Sequence[Example] | str | Path, skip_bad: bool, allow_outside_paths: bool = True
                  ) -> tuple[list[Example], list[tuple[str, str]], str]:
    """(examples, bad manifest lines, manifest path or ""): a manifest path is read, bad lines left out under skip_bad;
    images outside the manifest's folder only with `allow_outside_paths`."""
    if isinstance(examples, Sequence) and not isinstance(examples, (str, Path)):
        return list(examples), [], ""
    allow = {"allow_outside_paths": allow_outside_paths}
    found, bad_lines = (read_manifest_skipping(examples, **allow) if skip_bad
                        else (read_manifest(examples, **allow), []))
    return found, bad_lines, str(examples)


def _check_target(out: Path) -> bool:
    """Whether `out` holds a store to resume; one-line errors for a path that cannot become one."""
    if TraceStore.exists(out):
        check_schema_version(out)
        store_lock.release(store_lock.acquire(out, "capture"))  # another writer at work: say so before loading a model
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NotAStoreError(f"{out} exists and is not a TraceStore; refusing to write there (give another --out)")
    return False


def _capture_into(out: Path, writer: TraceStoreWriter | None, cap: Capture, examples: Sequence[Example],
                  attrs: dict[str, str], *, skip_bad: bool, progress: bool, examples_per_chunk: int,
                  bad_lines: Sequence[tuple[str, str]] = ()) -> TraceStore:
    adapter, spec = cap.adapter, cap.spec
    done = writer.done_ids() if writer is not None else set()
    todo = [ex for ex in examples if ex.id not in done]
    if writer is not None and todo:
        foreign = len(done - {ex.id for ex in examples})
        if foreign:
            warnings.warn(f"store {out} holds {foreign} examples that are not among these; adding {len(todo)} more "
                          "to it (the store becomes their union)", UserWarning, stacklevel=3)
    limits = _store_limits(writer, cap) if writer is not None else None
    checked = check_examples(adapter, todo, skip_bad=skip_bad, progress=progress, limits=limits, out=out)
    checked.skipped[:0] = bad_lines
    max_positions = limits["position"][1] if limits else None
    if writer is None and not checked.examples:
        raise ValueError(_nothing_to_capture(examples, checked.skipped))
    labels = _label_names(checked.examples)
    if writer is not None:
        labels = [c[len("label_"):] for c in writer.layout.example_coords if c.startswith("label_")]
    n_before = len(done)
    bar = progress_bar(total=n_before + len(checked.examples), initial=n_before, desc="capture",
               unit="ex", disable=not progress, dynamic_ncols=True)
    device = next(adapter.model.parameters()).device
    n_positions = max_positions or checked.max_len
    store = {"writer": writer}

    def write(gathered: Gathered, batch_examples: list[Example]) -> None:
        # in the writer thread, while the next batch computes: wait for the transfer, unpad, append
        rows = gathered.rows(n_positions)
        if store["writer"] is None:
            store["writer"] = _create_writer(out, cap, rows[0], checked, labels, attrs, examples_per_chunk)
        store["writer"].append([ex.id for ex in batch_examples], _example_coords(batch_examples, labels),
                               _stack_rows(rows, store["writer"].variables))
        bar.update(len(batch_examples))

    with Behind() as behind:
        for start in range(0, len(checked.examples), spec.batch_size):
            batch_examples = checked.examples[start : start + spec.batch_size]
            host = adapter.build_inputs(batch_examples, padding_side=spec.padding_side)
            batch = to_device(host, device)
            saved = _forward(cap, batch, host)
            behind.submit(functools.partial(write, cap.gather(batch, saved, host), batch_examples))
    bar.close()
    writer = store["writer"]
    for example_id, reason in checked.skipped:
        writer.record_skipped(example_id, reason)
    return writer.close()


def _nothing_to_capture(examples: Sequence[Example], skipped: Sequence[tuple[str, str]]) -> str:
    """Why a new store would be empty: no examples given, or every one skipped (the first reasons named)."""
    if not skipped:
        return "no example to capture: the example list holds none"
    shown = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
    more = f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return f"no example could be captured: all {len(skipped)} were skipped: {shown}{more}"


@torch.inference_mode()
def _forward(cap: Capture, batch, host=None) -> dict:
    with cap.recording(batch, host):
        with cap.envoy.trace(**batch.inputs):
            saved = cap.tap(batch)
    return saved


def _store_limits(writer: TraceStoreWriter, cap: Capture) -> dict[str, tuple[str, int]]:
    """Size rule -> (dim, size) of an existing store's growing dims."""
    lay = writer.layout
    limits = {"position": ("position", lay.dim_size("position"))}
    for rec in cap.recordables:
        for dim, rule in rec.grows.items():
            if rule != "position" and rec.name in lay.variables:
                limits[rule] = (dim, lay.dim_size(dim))
    return limits


def _create_writer(out: Path, cap: Capture, first: dict[str, np.ndarray], checked: _Checked,
                   labels: list[str], attrs: dict[str, str], examples_per_chunk: int) -> TraceStoreWriter:
    """Create the store: labelled dims from the adapter and spec, growing dims by each recordable's rule
    (the most any checked example needs), the rest from one captured row."""
    adapter, spec = cap.adapter, cap.spec
    coords = {
        "layer": list(cap.layers),
        "head": list(range(adapter.num_heads)),
        "kv_head": list(range(adapter.num_kv_heads)),
        "source": list(SOURCES),
        "segment": list(SEGMENT_NAMES),
        "query": list(spec.query_slots),
        "position": list(range(checked.max_len)),
        "corner": ["x0", "y0", "x1", "y1"],
        "hw": ["height", "width"],
    }
    sizes: dict[str, int] = {}
    for rec in cap.recordables:
        row = np.asarray(first[rec.name])
        for axis, dim in enumerate(rec.dims):
            if dim in coords or dim in sizes:
                continue
            rule = rec.grows.get(dim)
            if rule is None:
                sizes[dim] = int(row.shape[axis])
            elif rule in checked.needs:
                sizes[dim] = checked.needs[rule]
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
