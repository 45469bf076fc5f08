"""Data-parallel capture: under torchrun / accelerate launch each process captures its share into its own
shard store, then rank 0 merges the shards in manifest order into the output store through its writer.

One writer per store by design: rank r writes only `OUT.shards/w{N}r{r}.zarr`; only rank 0 writes OUT.
Shares are whole batches (batch k of the one-process run goes to rank k mod N), so every example is
captured in the same batch, with the same padding, as in a one-process capture. Kill any rank and run the
same command again: each shard resumes, the merge resumes (it appends in manifest order, so what OUT
holds is always a prefix), and the shards are deleted once OUT holds everything.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probe.data.example import Example
from probe.data.manifest import read_manifest, read_manifest_skipping
from probe.store import TraceStore, TraceStoreWriter
from probe.store.schema import SKIPPED_ATTR, Layout

# a rank waits for the slowest one at the end of the capture: allow long captures
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class World:
    """This process's rank, local rank and the number of processes (torch.distributed launcher env)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"RANK {self.rank} is outside WORLD_SIZE {self.size}")


def world() -> World:
    """The launcher's RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun and accelerate launch); one process if unset."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def shard_folder(out: str | Path) -> Path:
    """Where the ranks' shard stores of output store `out` live (a sibling, so `out` stays a plain store)."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shares(examples: Sequence[Example], batch_size: int, n: int) -> list[list[Example]]:
    """Each rank's examples: batch k (of `batch_size`, in order) goes to rank k mod n."""
    out: list[list[Example]] = [[] for _ in range(n)]
    for k, start in enumerate(range(0, len(examples), batch_size)):
        out[k % n].extend(examples[start : start + batch_size])
    return out


def data_parallel_capture(model: Any, examples: Sequence[Example] | str | Path, out: str | Path, spec: Any = None,
                          *, skip_bad: bool = False, progress: bool = True, device: Any = None,
                          **kwargs: Any) -> TraceStore:
    """This process's part of a data-parallel capture; every rank returns the merged store."""
    from probe.capture.run import _check_target, capture_local
    from probe.capture.spec import CaptureSpec

    spec = spec or CaptureSpec()
    me, out = world(), Path(out)
    _check_target(out)  # a path that cannot become a store fails now, not after every rank's capture
    manifest, bad_lines = "", []
    if not isinstance(examples, Sequence) or isinstance(examples, (str, Path)):
        manifest = str(examples)
        examples, bad_lines = read_manifest_skipping(examples) if skip_bad else (read_manifest(examples), [])
    done = set(TraceStore.open(out).example_ids) if TraceStore.exists(out) else set()
    todo = [ex for ex in examples if ex.id not in done]
    mine = shares(todo, spec.batch_size, me.size)[me.rank]
    if device is None and kwargs.get("device_map") is None:
        import torch

        device = f"cuda:{me.local_rank}" if torch.cuda.is_available() else "cpu"
    if mine:
        shard = shard_folder(out) / f"w{me.size}r{me.rank}.zarr"
        shard.parent.mkdir(parents=True, exist_ok=True)
        capture_local(model, mine, shard, spec, skip_bad=skip_bad, progress=progress and me.rank == 0,
                      device=device, **kwargs)
    _barrier()
    if me.rank == 0:
        merge_shards(out, [ex.id for ex in examples], manifest=manifest, skipped=bad_lines,
                     progress=progress)
    _barrier()
    return TraceStore.open(out)


def _barrier() -> None:
    """Wait for every rank (gloo, so it works on CPU and beside a user's NCCL group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
    dist.barrier(group=group)


def merge_shards(out: str | Path, order: Sequence[str], *, manifest: str = "",
                 skipped: Sequence[tuple[str, str]] = (), progress: bool = True) -> TraceStore:
    """Append the shard stores' examples to `out` in `order` (ids), through its writer; resumable; then drop the shards.

    Dims that grow with the examples (position, visual rows) take the largest any shard has; shorter
    shards are padded with each variable's fill, as a one-process capture pads.
    """
    from probe.progress import progress_bar

    out = Path(out)
    folder = shard_folder(out)
    shards = [TraceStore.open(p) for p in sorted(folder.glob("*.zarr")) if TraceStore.exists(p)]
    if not shards:
        if TraceStore.exists(out):
            return TraceStore.open(out)
        raise FileNotFoundError(f"no shard stores in {folder} to merge into {out}")
    where: dict[str, tuple[int, int]] = {}
    for s, store in enumerate(shards):
        for row, ex_id in enumerate(store.example_ids):
            where.setdefault(ex_id, (s, row))
    if TraceStore.exists(out):
        writer = TraceStoreWriter.resume(out)
    else:
        attrs = {k: v for k, v in shards[0].attrs.items() if k != SKIPPED_ATTR}
        attrs["manifest"] = manifest
        lay = _merged_layout([s.layout for s in shards])
        writer = TraceStoreWriter.create(out, variables=lay.variables, coords=lay.coords, sizes=lay.sizes,
                                         example_coords=lay.example_coords, attrs=attrs,
                                         examples_per_chunk=lay.examples_per_chunk,
                                         max_chunk_bytes=lay.max_chunk_bytes)
    try:
        have = writer.done_ids()
        todo = [i for i in order if i in where and i not in have]
        step = writer.layout.examples_per_chunk
        datasets = [s.dataset for s in shards]
        bar = progress_bar(total=len(todo), desc="merge shards", unit="ex", disable=not progress)
        for start in range(0, len(todo), step):
            ids = todo[start : start + step]
            coords, data = _rows(datasets, [where[i] for i in ids], writer.layout)
            writer.append(ids, coords, data)
            bar.update(len(ids))
        bar.close()
        shard_skips = {d["example"]: d["reason"] for s in shards for d in s.skipped}
        reasons = dict(skipped) | shard_skips
        for ex_id in [i for i in order if i in reasons] + [i for i in reasons if i not in set(order)]:
            if ex_id not in where:
                writer.record_skipped(ex_id, reasons[ex_id])
    except BaseException:
        writer.abandon()
        raise
    store = writer.close()
    _copy_groups(shards, store)
    shutil.rmtree(folder)
    return store


def _merged_layout(layouts: list[Layout]) -> Layout:
    """The shards' layout with each growing dim at its largest and the union of example coords."""
    first = max(layouts, key=lambda lay: len(lay.coords.get("position", [])))
    sizes = {d: max(lay.sizes.get(d, 0) for lay in layouts) for d in first.sizes}
    example_coords = {k: v for lay in layouts for k, v in lay.example_coords.items()}
    fixed = [c for c in example_coords if not c.startswith("label_")]
    labels = sorted(c for c in example_coords if c.startswith("label_"))
    return Layout(first.variables, first.coords, sizes, {c: example_coords[c] for c in fixed + labels},
                  first.examples_per_chunk, first.max_chunk_bytes)


def _rows(datasets: list, at: list[tuple[int, int]], layout: Layout) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """Example coords and data of the rows `at` ((shard, row) each), in that order, each padded to `layout`."""
    coords: dict[str, list] = {c: [] for c in layout.example_coords}
    data: dict[str, list] = {v: [] for v in layout.variables}
    for s in sorted({s for s, _ in at}):
        rows = [r for t, r in at if t == s]
        part = datasets[s].isel(example=rows)
        for c in coords:
            coords[c].append(part[c].values if c in part.coords else np.full(len(rows), "", dtype=object))
        for v, spec in layout.variables.items():
            data[v].append(_pad(part[v].values, (len(rows),) + layout.shape(v), spec.fill_value))
    # rows were gathered shard by shard: put them back in the order asked
    gathered = [(s, r) for s in sorted({s for s, _ in at}) for t, r in at if t == s]
    back = [gathered.index(pos) for pos in at]
    return ({c: list(np.concatenate(v)[back]) for c, v in coords.items()},
            {v: np.concatenate(parts)[back] for v, parts in data.items()})


def _pad(arr: np.ndarray, shape: tuple[int, ...], fill: Any) -> np.ndarray:
    pad = [(0, s - a) for a, s in zip(arr.shape, shape)]
    return np.pad(arr, pad, constant_values=fill) if any(p for _, p in pad) else arr


def _copy_groups(shards: list[TraceStore], store: TraceStore) -> None:
    """Sub-groups written beside the capture (the vocab), from the first shard that has each."""
    for shard in shards:
        for name in shard.groups():
            if name not in store.groups():
                ds = shard.read_group(name).load()
                config = json.loads(ds.attrs.get("config", "null"))
                store.write_group(name, ds, config if isinstance(config, dict) else None)
