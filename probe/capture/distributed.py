"""Data-parallel capture: under torchrun / accelerate launch each process captures its share into its own
shard store, then rank 0 merges the shards in manifest order into the output store through its writer.

One writer per store by design: rank r writes only `OUT.shards/w{N}r{r}.zarr`; only rank 0 writes OUT.
First the ranks check the examples' inputs (each every N-th, verdicts shared over gloo), so all know
which are bad before any batch is formed; then the good examples are cut into the one-process run's
batches and batch k goes to rank k mod N. Every example is thus captured in the same batch, with the
same padding, as in a one-process capture, with or without --skip-bad (bad ones leave the same gaps,
and are recorded in OUT in the one-process order). Kill any rank and run the same command again: each
shard resumes (its commits fall on batch boundaries), the merge resumes (it appends in manifest order,
so what OUT holds is always a prefix; batches are cut from every good example whether merged or not),
and the shards are deleted once OUT holds everything.

Launchers: anything that sets RANK / LOCAL_RANK / WORLD_SIZE and MASTER_ADDR / MASTER_PORT
(torchrun; accelerate launch --multi_gpu, which runs torchrun and works on CPU-only machines too).
`accelerate launch --cpu --num_processes N` starts N processes only through mpirun (--mpirun_hostfile),
whose MPI rank variables are not read here: without mpirun it starts one process, which captures alone.
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


def shares(examples: Sequence[Example], batch_size: int, n: int, *, batches: bool = False) -> list[list[Any]]:
    """Each rank's examples (or its batches): batch k (of `batch_size`, in order) goes to rank k mod n."""
    out: list[list[Any]] = [[] for _ in range(n)]
    for k, start in enumerate(range(0, len(examples), batch_size)):
        batch = list(examples[start : start + batch_size])
        if batches:
            out[k % n].append(batch)
        else:
            out[k % n].extend(batch)
    return out


def data_parallel_capture(model: Any, examples: Sequence[Example] | str | Path, out: str | Path, spec: Any = None,
                          *, lora_adapter: str | Path | None = None, skip_bad: bool = False, progress: bool = True,
                          examples_per_chunk: int = 64, device: Any = None, device_map: Any = None,
                          allow_outside_paths: bool = True) -> TraceStore:
    """This process's part of a data-parallel capture (`capture`'s arguments); every rank returns the merged store."""
    from probe.capture.run import Loaded, _check_target, capture_local, read_examples
    from probe.capture.spec import CaptureSpec

    spec = spec or CaptureSpec()
    me, out = world(), Path(out)
    _check_target(out)  # a path that cannot become a store fails now, not after every rank's capture
    examples, bad_lines, manifest = read_examples(examples, skip_bad, allow_outside_paths)
    if device is None and device_map is None:
        import torch

        device = f"cuda:{me.local_rank}" if torch.cuda.is_available() else "cpu"
    loaded = Loaded.of(model, lora_adapter=lora_adapter, device=device, device_map=device_map)
    done = set(TraceStore.open(out).example_ids) if TraceStore.exists(out) else set()
    bad = _bad_examples(loaded, [ex for ex in examples if ex.id not in done], me, progress)
    if bad and not skip_bad:
        from probe.models.base import BadExampleError

        raise BadExampleError(*bad[0])  # what a one-process capture stops at: the first bad example
    good = [ex for ex in examples if ex.id not in dict(bad)]
    # the one-process run's batches, over every good example (captured or not): batch k goes to rank k mod N;
    # a batch already merged into OUT, or already in this rank's shard, is not captured again
    mine = [ex for batch in shares(good, spec.batch_size, me.size, batches=True)[me.rank]
            if not all(ex.id in done for ex in batch) for ex in batch]
    if mine:
        shard = shard_folder(out) / f"w{me.size}r{me.rank}.zarr"
        shard.parent.mkdir(parents=True, exist_ok=True)
        # shard commits fall on batch boundaries, so a resumed shard never captures part of a batch alone
        per_chunk = -(-examples_per_chunk // spec.batch_size) * spec.batch_size
        capture_local(loaded, mine, shard, spec, lora_adapter=lora_adapter, progress=progress and me.rank == 0,
                      examples_per_chunk=per_chunk)
    _barrier()
    if me.rank == 0:
        merge_shards(out, [ex.id for ex in examples], manifest=manifest, skipped=bad_lines + bad,
                     progress=progress, examples_per_chunk=examples_per_chunk)
    _barrier()
    return TraceStore.open(out)


def _bad_examples(loaded: Any, examples: Sequence[Example], me: World, progress: bool) -> list[tuple[str, str]]:
    """(id, reason) of the examples the model cannot be fed, in order: each rank checks every N-th, the ranks share."""
    from probe.capture.run import check_examples

    checked = check_examples(loaded.adapter, examples[me.rank :: me.size], skip_bad=True,
                             progress=progress and me.rank == 0)
    import torch.distributed as dist

    found: list[Any] = [None] * me.size
    dist.all_gather_object(found, checked.skipped, group=_group())
    reasons = dict(pair for part in found for pair in part)
    return [(ex.id, reasons[ex.id]) for ex in examples if ex.id in reasons]


_GLOO: Any = None  # the gloo group made beside a non-gloo default group


def _group() -> Any:
    """A gloo process group over every rank (so it works on CPU and beside a user's NCCL group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    if dist.get_backend() == "gloo":
        return None
    global _GLOO
    if _GLOO is None:
        _GLOO = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    return _GLOO


def _barrier() -> None:
    """Wait for every rank."""
    import torch.distributed as dist

    dist.barrier(group=_group())


def merge_shards(out: str | Path, order: Sequence[str], *, manifest: str = "",
                 skipped: Sequence[tuple[str, str]] = (), progress: bool = True,
                 examples_per_chunk: int | None = None) -> TraceStore:
    """Append the shard stores' examples to `out` in `order` (ids), through its writer; resumable; then drop the shards.

    Dims that grow with the examples (position, visual rows) take the largest any shard has; shorter
    shards are padded with each variable's fill, as a one-process capture pads. `skipped` (id or
    manifest line, reason) are recorded in the order given, then any a shard recorded; `examples_per_chunk`
    of a new `out` defaults to the shards'.
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
                                         examples_per_chunk=examples_per_chunk or lay.examples_per_chunk,
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
        shard_skips = [(d["example"], d["reason"]) for s in shards for d in s.skipped]
        recorded: set[str] = set()  # (again in full on a resumed merge: re-recording keeps this order)
        for ex_id, reason in list(skipped) + shard_skips:
            if ex_id not in where and ex_id not in recorded:
                writer.record_skipped(ex_id, reason)
                recorded.add(ex_id)
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
