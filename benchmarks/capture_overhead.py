"""Capture overhead: bare SDPA forward vs our capture vs what users do instead, side by side.

Each method gets the same quantities (per-segment attention shares of the last prompt token and
of the text queries, the last prompt token's attention row, segment-pooled residuals, every
decoder layer) on a LLaVA-architecture model of realistic shape with random weights (8 decoder
layers, d=512, 576 visual tokens + text):

  bare     the model's SDPA forward, nothing recorded
  capture  visblind's Capture (shares from the model's own SDPA call, nnsight taps)
  eager    output_attentions=True + output_hidden_states under eager attention, reduced after
  nnsight  nnsight trace under eager saving every decoder layer's attention weights and output, reduced after
  tl       TransformerLens TransformerBridge.run_with_cache (it forces eager), names filtered to
           the decoder's hook_pattern and hook_resid_post, reduced after (skipped if not installed)

Prints wall-time, CPU-time and peak-memory ratios to `bare` measured in one run. Each (method, T) runs in a
fresh subprocess so peak memory is that method's own (CPU: ru_maxrss above the post-load
baseline after the method's first call, in one more process run with a fixed malloc mmap threshold,
where it repeats to the MiB; CUDA: max_memory_allocated above the weights). Inside
that process each timed call follows a bare SDPA forward on the same weights, and the time ratios are
the median of these pairs (a shared machine's load drifts; separate processes also differ by where
the weights landed); TransformerLens rewires the model in place, so its ratio is against the bare process.
capture's timed call includes collect() of the forward's quantities, not the input bookkeeping
(token ids and strings, visual layout), which is the same whatever computes the attention. Then, unless --no-bf16, the largest
error of capture's shares in bfloat16 against the float32 softmax of the same bf16 q/k.

    python benchmarks/capture_overhead.py [--lengths 640 1280 2560] [--repeats 3] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

N_VISUAL = 576
METHODS = ("bare", "capture", "eager", "nnsight", "tl")


def build(device: str, dtype: str):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                       image_size=336, patch_size=14),
        text_config=LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=8, vocab_size=32000, max_position_embeddings=8192),
        image_token_id=31999,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    cfg._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(cfg).to(device=device, dtype=getattr(torch, dtype)).eval()
    return model


def inputs(model, seq_len: int, batch: int, device: str):
    import torch

    n_text = seq_len - N_VISUAL
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 30000, (batch, n_text), generator=g)
    ids = torch.cat([text[:, :8], torch.full((batch, N_VISUAL), model.config.image_token_id), text[:, 8:]], dim=1)
    pixel_values = torch.randn(batch, 3, 336, 336, generator=g).to(model.dtype)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixel_values.to(device)}


def run_one(method: str, seq_len: int, batch: int, repeats: int, device: str, dtype: str) -> dict:
    """Time one method at one length in this process; returns seconds per forward and peak extra memory."""
    import torch

    from probe.capture import Capture, CaptureSpec
    from probe.capture.recordables import INPUTS
    from probe.models.base import ModelInputs
    from probe.models.llava import LlavaAdapter
    from probe.segments import Segment

    model = build(device, dtype)
    feed = inputs(model, seq_len, batch, device)
    segments = torch.where(feed["input_ids"] == model.config.image_token_id, int(Segment.VISUAL), int(Segment.TEXT))
    adapter = LlavaAdapter(model, None)
    layers = adapter.attention_modules
    spec = CaptureSpec(attn_share=True, attn_pattern=True, max_answer_tokens=0, resid=("pooled",), projector=False)
    cap = Capture(adapter, spec) if method == "capture" else None
    if cap is not None:  # token ids/strings, layout: bookkeeping from the inputs alone, not what is compared here
        cap.recordables = [r for r in cap.recordables if r.source != INPUTS]
    batch_inputs = ModelInputs(feed, segments, None, [str(i) for i in range(batch)])
    if method in ("eager", "nnsight"):
        model.set_attn_implementation("eager")
    if method == "nnsight":
        from nnsight import NNsight

        envoy = NNsight(model)
    if method == "tl":
        bridge = _boot_bridge(model)

    def once():
        with torch.inference_mode():
            if method == "bare":
                model(**feed)
            elif method == "capture":
                cap.collect(batch_inputs, _traced(cap, batch_inputs))
            elif method == "eager":
                out = model(**feed, output_attentions=True, output_hidden_states=True)
                return _reduce(out.attentions, out.hidden_states[1:], segments)
            elif method == "nnsight":
                with envoy.trace(**feed):
                    saved = _nnsight_save(envoy, len(layers))
                attn, resid = saved
                return _reduce(attn, [r[0] if isinstance(r, tuple) else r for r in resid], segments)
            else:
                names = [f"blocks.{i}.{h}" for i in range(len(layers)) for h in ("attn.hook_pattern", "hook_resid_post")]
                _, cache = bridge.run_with_cache(feed["input_ids"], pixel_values=feed["pixel_values"],
                                                 attention_mask=feed["attention_mask"], names_filter=names)
                return _reduce([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(len(layers))],
                               [cache[f"blocks.{i}.hook_resid_post"] for i in range(len(layers))], segments)

    def bare():
        # the bare SDPA forward on the same weights in this process, paired with each timed call of `method`
        impl = model.config.text_config._attn_implementation
        model.set_attn_implementation("sdpa")
        with torch.inference_mode():
            model(**feed)
        model.set_attn_implementation(impl)

    def timed(fn) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    # the first call sets the peak (ru_maxrss is a high-water mark): read it before any paired bare call
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    # TransformerLens rewires the model in place (its bridge components, eager): no bare forward left to pair with
    paired = method not in ("bare", "tl")
    if paired and repeats:
        bare()
    times, cpu_times, wall_ratio, cpu_ratio = [], [], [], []
    for _ in range(repeats):
        if paired:
            bare_wall, bare_cpu = timed(bare)
        wall, cpu = timed(once)
        times.append(wall)
        cpu_times.append(cpu)
        if paired:
            wall_ratio.append(wall / bare_wall)
            cpu_ratio.append(cpu / bare_cpu)
    return {"method": method, "T": seq_len, "seconds": min(times, default=0.0), "cpu_seconds": min(cpu_times, default=0.0),
            "peak_mib": peak,
            "paired_wall": wall_ratio, "paired_cpu": cpu_ratio}


def _nnsight_save(envoy, n_layers: int):
    """Inside a trace: save every decoder layer's attention weights and output, in execution order."""
    import nnsight

    decoder = envoy.model.language_model.layers
    attn, resid = [], []
    for i in range(n_layers):
        attn.append(decoder[i].self_attn.output[1])
        resid.append(decoder[i].output)
    return nnsight.save((attn, resid))


def _reduce(attentions, hidden, segments):
    """What a user computes from full attention maps: shares per segment, last-token rows, pooled residuals."""
    import torch

    from probe.capture.reduce import pool_segments, query_positions
    from probe.segments import Segment

    onehot = torch.nn.functional.one_hot(segments, len(Segment)).float()
    shares = [a.float() @ onehot.unsqueeze(1) for a in attentions]
    last = [a[:, :, query_positions(segments, 0)[0, 0]].float() for a in attentions]
    pooled = [pool_segments(h, segments) for h in hidden]
    return shares, last, pooled


def _boot_bridge(model):
    """TransformerLens 4.x bridge over the in-memory model (offline: a local byte tokenizer)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from probe.testing import build_byte_tokenizer

    folder = tempfile.mkdtemp()
    build_byte_tokenizer().save_pretrained(folder)
    model.config.architectures = [type(model).__name__]
    bridge = TransformerBridge.boot_transformers(folder, hf_model=model, tokenizer=AutoTokenizer.from_pretrained(folder))
    return bridge.eval()


def bf16_error(seq_len: int, device: str) -> dict:
    """Largest |share| error of capture in bfloat16 vs the float32 softmax of the same bf16 q/k (second pass)."""
    import torch

    from probe.capture import _attn_math
    from probe.capture._attn_math import MaskSource
    from probe.capture.attention import AttentionRecorder
    from probe.models.llava import LlavaAdapter
    from probe.segments import Segment

    model = build(device, "bfloat16")
    feed = inputs(model, seq_len, 1, device)
    segments = torch.where(feed["input_ids"] == model.config.image_token_id, int(Segment.VISUAL), int(Segment.TEXT))
    modules = LlavaAdapter(model, None).attention_modules
    rec = AttentionRecorder(modules, list(range(len(modules))), rows=False, keys=True, queries=True)
    rec.set_batch(segments)
    with rec, torch.inference_mode():
        model(**feed)
    errs = []
    for i, res in rec.results.items():
        mask = MaskSource(None, segments.to(device) != Segment.PAD, True, None)
        ref = _attn_math.attention_shares(res.queries, res.keys, segments.to(device), scaling=modules[i].scaling,
                                          mask=mask, block=256)
        errs.append(float((res.share - ref).abs().nan_to_num().max()))
    return {"T": seq_len, "max_abs": max(errs), "per_layer": errs}


def _traced(cap, batch):
    with cap.recording(batch):
        with cap.envoy.trace(**batch.inputs):
            saved = cap.tap(batch)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[640, 1280, 2560])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 error measurement")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        method, seq_len = args.worker[0], int(args.worker[1])
        if method == "bf16":
            print(json.dumps(bf16_error(seq_len, args.device)))
        else:
            print(json.dumps(run_one(method, seq_len, args.batch, args.repeats, args.device, args.dtype)))
        return
    methods = [m for m in args.methods if m != "tl" or importlib.util.find_spec("transformer_lens")]
    if "tl" in args.methods and "tl" not in methods:
        print("transformer-lens is not installed: tl skipped (pip install transformer-lens)", file=sys.stderr)
    if "bare" not in methods:
        methods.insert(0, "bare")

    def worker(method: str, seq_len: int, peak_only: bool = False) -> dict:
        cmd = [sys.executable, __file__, "--worker", method, str(seq_len), "--batch", str(args.batch),
               "--repeats", "0" if peak_only else str(args.repeats), "--device", args.device, "--dtype", args.dtype,
               "--threads", str(args.threads)]
        # glibc's adaptive mmap threshold keeps freed blocks of up to 32 MiB in the heap, so ru_maxrss varies by
        # +-60 MiB run to run; a fixed threshold returns every large block at once and the peak repeats exactly
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if peak_only else None
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if res.returncode:
            sys.exit(f"{method} at T={seq_len} failed:\n{res.stderr[-2000:]}")
        print(f"  measured {method:8s} T={seq_len}{' (peak memory)' if peak_only else ''}", file=sys.stderr)
        return json.loads(res.stdout.strip().splitlines()[-1])

    rows = {(m, t): worker(m, t) for t in args.lengths for m in methods}
    if args.device == "cpu":  # peak memory from its own process, timings from the default allocator's
        for (m, t), r in rows.items():
            r["peak_mib"] = worker(m, t, peak_only=True)["peak_mib"]
    print(f"device={args.device} dtype={args.dtype} batch={args.batch} threads={args.threads or 'default'} "
          f"layers=8 d=512 visual={N_VISUAL} repeats={args.repeats}")
    others = [m for m in methods if m != "bare"]
    # wall time is what a user waits; process CPU time is robust to other load on a shared machine. Time ratios are
    # the median over repeats of (method / the bare forward timed just before it in the same process, same weights);
    # [lo-hi] is their range. tl (marked *) cannot pair: min over repeats / min of the separate bare process.
    print("ratios to bare: wall time / CPU time / peak memory; CPU-time range over the paired repeats in brackets")
    print(f"{'T':>6} {'bare s':>7} {'bare cpu s':>10} {'bare MiB':>8}  " + "  ".join(f"{m:>32}" for m in others))
    for t in args.lengths:
        a = rows[("bare", t)]
        cells = []
        for m in others:
            r = rows[(m, t)]
            mem = r["peak_mib"] / max(a["peak_mib"], 1)
            if r["paired_cpu"]:
                lo, hi = min(r["paired_cpu"]), max(r["paired_cpu"])
                cells.append(f"{statistics.median(r['paired_wall']):>6.2f} {statistics.median(r['paired_cpu']):>6.3f} "
                             f"{mem:>6.2f} [{lo:.3f}-{hi:.3f}]")
            else:
                cells.append(f"{r['seconds'] / a['seconds']:>6.2f} {r['cpu_seconds'] / a['cpu_seconds']:>6.3f} "
                             f"{mem:>6.2f}*{'':>13}")
        print(f"{t:>6} {a['seconds']:>7.2f} {a['cpu_seconds']:>10.2f} {a['peak_mib']:>8.0f}  " + "  ".join(cells))
    print("absolute: " + "; ".join(f"{m} T={t}: {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU), {r['peak_mib']:.0f} MiB"
                                   for (m, t), r in rows.items()))
    if not args.no_bf16:
        err = worker("bf16", args.lengths[0])
        print(f"bfloat16 capture shares vs float32 softmax of the same bf16 q/k, T={err['T']}: "
              f"max abs error {err['max_abs']:.1e} (per layer {', '.join(f'{e:.1e}' for e in err['per_layer'])})")


if __name__ == "__main__":
    main()
