"""Attention-edit overhead: each edit's forward time as a ratio to the bare SDPA forward, measured in one run.

Same model and inputs as benchmarks/capture_overhead.py (LLaVA architecture, random weights, 8 decoder
layers, d=512, 576 visual tokens + text). Edits at their papers' settings: boost (PAI, alpha 0.2, layers 2+),
temperature (scale 0.8), knockout (all layers), VAR (p 0.6, rho 0.5, sinks given: 4 visual tokens + the first
token), each for the last prompt query and, with --queries text, for every text query. Methods are
interleaved and the minimum over repeats is reported, as wall time and (on CPU) as the process's CPU time.

    python benchmarks/intervention_overhead.py [--lengths 640 1280] [--repeats 5] [--queries last_prompt] [--threads N]
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--queries", nargs="+", default=["last_prompt"])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    from interventions import VAR, Boost, Knockout, Temperature
    from probe.models.base import ModelInputs
    from probe.models.llava import LlavaAdapter
    from probe.segments import Segment

    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _capture_benchmark()
    model = bench.build(args.device, args.dtype)
    adapter = LlavaAdapter(model, None)
    queries = tuple(args.queries)
    print(f"device {args.device}, {args.dtype}, {torch.get_num_threads()} threads, queries {queries}; ratio = edit / bare SDPA forward")
    for seq_len in args.lengths:
        feed = bench.inputs(model, seq_len, 1, args.device)
        segments = torch.where(feed["input_ids"] == model.config.image_token_id, int(Segment.VISUAL), int(Segment.TEXT)).cpu()
        batch = ModelInputs(feed, segments, None, ["0"])
        sinks = torch.zeros_like(segments, dtype=torch.bool)
        sinks[0, 0] = True
        sinks[0, 8:12] = True
        var = VAR(adapter, p=0.6, rho=0.5, queries=queries)
        var.set_sinks(sinks)
        edits = {
            "boost": Boost(adapter, alpha=0.2, queries=queries),
            "temperature": Temperature(adapter, scale=0.8, queries=queries),
            "knockout": Knockout(adapter, queries=queries),
            "var": var,
        }
        for e in edits.values():
            e.set_batch(batch)

        def forward(edit=None):
            with torch.inference_mode():
                if edit is None:
                    model(**feed)
                else:
                    with edit:
                        model(**feed)
            if args.device == "cuda":
                torch.cuda.synchronize()

        times: dict[str, list[float]] = {name: [] for name in ["bare", *edits]}
        cpu: dict[str, list[float]] = {name: [] for name in times}
        for name in times:  # warm-up
            forward(edits.get(name))
        for _ in range(args.repeats):
            for name in times:
                t0, c0 = time.perf_counter(), time.process_time()
                forward(edits.get(name))
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        bare, bare_cpu = min(times["bare"]), min(cpu["bare"])
        wall = "  ".join(f"{name} {min(times[name]) / bare:.3f}x" for name in edits)
        cpus = "  ".join(f"{name} {min(cpu[name]) / bare_cpu:.3f}x" for name in edits)
        # on a shared CPU the process's CPU time is the steadier measure; on CUDA only wall time means anything
        print(f"T={seq_len}: bare {bare * 1000:.0f} ms wall  {wall}")
        if args.device == "cpu":
            print(f"T={seq_len}: bare {bare_cpu * 1000:.0f} ms CPU   {cpus}")


if __name__ == "__main__":
    main()
