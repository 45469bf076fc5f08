"""Attention-edit overhead: each edit's forward time as a ratio to the bare SDPA forward, measured in one run.

Same model and inputs as benchmarks/capture_overhead.py (LLaVA architecture, random weights, 8 decoder
layers, d=512, 576 visual tokens + text). Edits at their papers' settings: boost (PAI, alpha 0.2, layers 2+),
temperature (scale 0.8), knockout (all layers), VAR (p 0.6, rho 0.5, sinks given: 4 visual tokens + the first
token), each for the last prompt query and, with --queries text, for every text query. Methods are
interleaved and the minimum over repeats is reported, as wall time and (on CPU) as the process's CPU time.

Per (b, T) also the host synchronisations of one edited forward inside the decoder span (CUDA: torch.cuda
set_sync_debug_mode; CPU: host reads of visblind's own code, probe.capture.host_reads); out of memory is reported.

    python benchmarks/intervention_overhead.py [--lengths 640 1280] [--batch 1 8] [--repeats 5] [--queries last_prompt]
        [--threads N] [--shape default|llava-1.5-7b|tiny] [--edits boost knockout ...]
    # GPU, the users' scale:
    python benchmarks/intervention_overhead.py --device cuda --shape llava-1.5-7b --lengths 1024 4096 --batch 1 8 \
        --edits boost knockout
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path


def _capture_benchmark():
    spec = importlib.util.spec_from_file_location("capture_overhead", Path(__file__).with_name("capture_overhead.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[640, 1280])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--shape", default="default", choices=["default", "llava-1.5-7b", "tiny"])
    parser.add_argument("--edits", nargs="+", default=["boost", "temperature", "knockout", "var"],
                        choices=["boost", "temperature", "knockout", "var"])
    parser.add_argument("--queries", nargs="+", default=["last_prompt"])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    from probe.models.llava import LlavaAdapter

    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _capture_benchmark()
    dtype = bench.resolve_dtype(args.dtype, args.device)
    model = bench.build(args.device, dtype, args.shape)
    adapter = LlavaAdapter(model, None)
    queries = tuple(args.queries)
    print(f"device {args.device}, {dtype}, shape {args.shape}, {torch.get_num_threads()} threads, queries {queries}; "
          "ratio = edit / bare SDPA forward (min over repeats); syncs = host synchronisations inside the decoder span")
    cuda = args.device.startswith("cuda")
    for b in args.batch:
        for seq_len in args.lengths:
            try:
                _measure(args, bench, model, adapter, queries, b, seq_len, cuda)
            except torch.cuda.OutOfMemoryError as err:
                print(f"b={b} T={seq_len}: out of memory ({str(err).splitlines()[0][:120]})")
                torch.cuda.empty_cache()


def _measure(args, bench, model, adapter, queries, b, seq_len, cuda) -> None:
    import torch

    from interventions import VAR, Boost, Knockout, Temperature
    from probe.models.base import ModelInputs
    from probe.segments import Segment

    feed = bench.inputs(model, seq_len, b, args.device)
    segments = torch.where(feed["input_ids"] == model.config.image_token_id, int(Segment.VISUAL), int(Segment.TEXT))
    batch = ModelInputs(feed, segments, None, [str(i) for i in range(b)])  # segments on the model's device
    sinks = torch.zeros_like(segments, dtype=torch.bool)
    sinks[:, 0] = True
    sinks[:, 8:12] = True
    make = {
        "boost": lambda: Boost(adapter, alpha=0.2, queries=queries),
        "temperature": lambda: Temperature(adapter, scale=0.8, queries=queries),
        "knockout": lambda: Knockout(adapter, queries=queries),
        "var": lambda: VAR(adapter, p=0.6, rho=0.5, queries=queries),
    }
    edits = {name: make[name]() for name in args.edits}
    if "var" in edits:
        edits["var"].set_sinks(sinks)
    for e in edits.values():
        e.set_batch(batch)

    def forward(edit=None):
        with torch.inference_mode():
            if edit is None:
                model(**feed)
            else:
                with edit:
                    model(**feed)
        if cuda:
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in ["bare", *edits]}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    peak: dict[str, float] = {}
    for name in times:  # warm-up, peak memory
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        forward(edits.get(name))
        if cuda:
            peak[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    syncs = {name: bench.count_syncs(lambda e=edits.get(name): forward(e), adapter.decoder_layers, args.device)
             for name in times}
    for _ in range(args.repeats):
        for name in times:
            t0, c0 = time.perf_counter(), time.process_time()
            forward(edits.get(name))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    bare, bare_cpu = min(times["bare"]), min(cpu["bare"])

    def n_syncs(name: str) -> str:
        c = syncs[name]
        return f"{c['inside']}/{c['total']}" if "total" in c else f"{c['ours']}"

    wall = "  ".join(f"{name} {min(times[name]) / bare:.3f}x ({n_syncs(name)} syncs)" for name in edits)
    cpus = "  ".join(f"{name} {min(cpu[name]) / bare_cpu:.3f}x" for name in edits)
    # on a shared CPU the process's CPU time is the steadier measure; on CUDA only wall time means anything
    print(f"b={b} T={seq_len}: bare {bare * 1000:.0f} ms wall ({n_syncs('bare')} syncs)  {wall}")
    if not cuda:
        print(f"b={b} T={seq_len}: bare {bare_cpu * 1000:.0f} ms CPU   {cpus}")
    else:
        print(f"b={b} T={seq_len}: peak MiB above weights: " + "  ".join(
            f"{n} {peak[n]:.0f} ({peak[n] / max(peak['bare'], 1):.2f}x)" for n in times))


if __name__ == "__main__":
    main()
