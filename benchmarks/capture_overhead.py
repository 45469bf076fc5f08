"""Capture overhead: bare SDPA forward vs our capture vs what users do instead, side by side.

Each method gets the same quantities (per-segment attention shares of the last prompt token and
of the text queries, the last prompt token's attention row, segment-pooled residuals, every
decoder layer) on a LLaVA-architecture model with random weights, of one of three shapes (--shape):
`default` (8 decoder layers, d=512, 576 visual tokens + text), `llava-1.5-7b` (CLIP ViT-L/14-336 + a
Llama-2-7B decoder: 32 layers, d=4096, 576 visual tokens; built directly on the device, bfloat16 on CUDA)
or `tiny` (a few-second smoke test of the script: 2 layers, d=64, 16 visual tokens):

  bare     the model's SDPA forward, nothing recorded
  capture  visblind's Capture (shares from the model's own SDPA call, nnsight taps), collect() included
  recorder the attention recorder alone, shares only (no rows, no taps, no collect)
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
Per (b, T) also the host synchronisations of one call: on CUDA counted with torch.cuda.set_sync_debug_mode
("warn"), inside the decoder layers' span and in the whole call (collect included); on CPU the host reads
inside the decoder span counted by probe.capture.host_reads.HostReads (visblind's own / the model's own).
A method that runs out of device memory is reported as OOM.

    python benchmarks/capture_overhead.py [--lengths 640 1280 2560] [--batch 1 8] [--repeats 3] [--device cpu]
        [--threads N] [--shape default|llava-1.5-7b|tiny] [--widen-align N]
    # GPU, the users' scale:
    python benchmarks/capture_overhead.py --device cuda --shape llava-1.5-7b --lengths 1024 4096 16384 \
        --batch 1 8 --methods bare capture recorder eager --repeats 5
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
METHODS = ("bare", "capture", "recorder", "eager", "nnsight", "tl")
# shape -> (vision tower, decoder, image side, visual tokens); LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B
SHAPES = {
    "default": (dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
                dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=8, vocab_size=32000), 336, 576),
    "llava-1.5-7b": (dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          projection_dim=768),
                     dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32064), 336, 576),
    "tiny": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=32000), 56, 16),
}


def n_visual(shape: str) -> int:
    return SHAPES[shape][3]


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto': bfloat16 on CUDA (what users run), float32 elsewhere."""
    return ("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" else dtype


def build(device: str, dtype: str, shape: str = "default"):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision, text, image, _ = SHAPES[shape]
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision, image_size=image, patch_size=14),
        text_config=LlamaConfig(**text, max_position_embeddings=32768),
        image_token_id=text["vocab_size"] - 1,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1 if shape != "llava-1.5-7b" else -2,
    )
    cfg._attn_implementation = "sdpa"
    if shape == "llava-1.5-7b":  # random weights straight on the device, in the run's dtype (no CPU copy of 7B)
        old = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            with torch.device(device):
                model = LlavaForConditionalGeneration(cfg)
        finally:
            torch.set_default_dtype(old)
        return model.eval()
    return LlavaForConditionalGeneration(cfg).to(device=device, dtype=getattr(torch, dtype)).eval()


def inputs(model, seq_len: int, batch: int, device: str):
    import torch

    vis = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    n_text = seq_len - vis
    if n_text < 9:
        raise SystemExit(f"T={seq_len} leaves no room for text after {vis} visual tokens")
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 30000, (batch, n_text), generator=g)
    ids = torch.cat([text[:, :8], torch.full((batch, vis), model.config.image_token_id), text[:, 8:]], dim=1)
    side = model.config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, side, side, generator=g).to(model.dtype)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixel_values.to(device)}


def run_one(method: str, seq_len: int, batch: int, repeats: int, device: str, dtype: str, shape: str = "default",
            widen_align: int | None = None) -> dict:
    """Time one method at one length in this process; returns seconds per forward, peak extra memory, syncs."""
    import torch

    try:
        return _run_one(method, seq_len, batch, repeats, device, dtype, shape, widen_align)
    except torch.cuda.OutOfMemoryError as err:
        return {"method": method, "T": seq_len, "b": batch, "oom": str(err).splitlines()[0][:160]}


def _run_one(method: str, seq_len: int, batch: int, repeats: int, device: str, dtype: str, shape: str,
             widen_align: int | None) -> dict:
    import torch

    from probe.capture import Capture, CaptureSpec
    from probe.capture.attention import AttentionRecorder
    from probe.capture.recordables import INPUTS
    from probe.models.base import ModelInputs
    from probe.models.llava import LlavaAdapter
    from probe.segments import Segment

    model = build(device, dtype, shape)
    feed = inputs(model, seq_len, batch, device)
    segments = torch.where(feed["input_ids"] == model.config.image_token_id, int(Segment.VISUAL), int(Segment.TEXT))
    adapter = LlavaAdapter(model, None)
    layers = adapter.attention_modules
    spec = CaptureSpec(attn_share=True, attn_pattern=True, max_answer_tokens=0, resid=("pooled",), projector=False)
    cap = Capture(adapter, spec) if method == "capture" else None
    if cap is not None:  # token ids/strings, layout: bookkeeping from the inputs alone, not what is compared here
        cap.recordables = [r for r in cap.recordables if r.source != INPUTS]
        cap.recorder.widen_align = widen_align
    recorder = AttentionRecorder(layers, list(range(len(layers))), rows=False) if method == "recorder" else None
    if recorder is not None:
        recorder.widen_align = widen_align
    batch_inputs = ModelInputs(feed, segments, None, [str(i) for i in range(batch)])
    host_inputs = ModelInputs({}, segments.cpu(), None, batch_inputs.example_ids)
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
                saved = _traced(cap, batch_inputs, host_inputs)
                try:
                    cap.collect(batch_inputs, saved, host_batch=host_inputs)
                except TypeError:  # an older visblind (comparing before/after)
                    cap.collect(batch_inputs, saved)
            elif method == "recorder":
                try:
                    recorder.set_batch(segments, host_segments=host_inputs.segments)
                except TypeError:
                    recorder.set_batch(segments)
                with recorder:
                    model(**feed)
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
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    # the first call sets the peak (ru_maxrss is a high-water mark): read it before any paired bare call
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    syncs = count_syncs(once, adapter.decoder_layers, device) if method != "tl" else {}
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
    return {"method": method, "T": seq_len, "b": batch, "seconds": statistics.median(times) if times else 0.0,
            "cpu_seconds": statistics.median(cpu_times) if cpu_times else 0.0,
            "peak_mib": peak, "paired_wall": wall_ratio, "paired_cpu": cpu_ratio, "syncs": syncs}


def count_syncs(fn, decoder_layers, device: str) -> dict:
    """Host synchronisations of one call of `fn`: inside the decoder layers' span, and in the whole call.

    CUDA: torch.cuda.set_sync_debug_mode("warn") warns at every synchronising call; each warning is attributed
    to its file:line. CPU: the host reads of tensor values inside the span (probe.capture.host_reads.HostReads),
    visblind's own and the model's own.
    """
    import collections
    import traceback
    import warnings

    import torch

    try:
        from probe.capture.host_reads import HostReads
    except ImportError:  # an older visblind (comparing before/after): the guard from this checkout
        spec = importlib.util.spec_from_file_location(
            "host_reads", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "probe", "capture", "host_reads.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        HostReads = module.HostReads

    if not device.startswith("cuda"):
        with HostReads(decoder_layers) as reads:
            fn()
        return {"inside": reads.ours + reads.theirs, "ours": reads.ours, "model": reads.theirs,
                "where": dict(reads.where.most_common(5))}
    state = {"inside": False}
    counts = collections.Counter()
    where = collections.Counter()
    handles = [decoder_layers[0].register_forward_pre_hook(lambda *a: state.update(inside=True)),
               decoder_layers[-1].register_forward_hook(lambda *a: state.update(inside=False))]

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        counts["total"] += 1
        if state["inside"]:
            counts["inside"] += 1
        frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename and "warnings" not in f.filename]
        if frames:
            where[f"{os.path.relpath(frames[-1].filename)}:{frames[-1].lineno}"] += 1

    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        for h in handles:
            h.remove()
    return {"inside": counts["inside"], "total": counts["total"], "where": dict(where.most_common(5))}


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


def bf16_error(seq_len: int, device: str, shape: str = "default") -> dict:
    """Largest |share| error of capture in bfloat16 vs the float32 softmax of the same bf16 q/k (second pass)."""
    import torch

    from probe.capture import _attn_math
    from probe.capture._attn_math import MaskSource
    from probe.capture.attention import AttentionRecorder
    from probe.models.llava import LlavaAdapter
    from probe.segments import Segment

    model = build(device, "bfloat16", shape)
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


def _traced(cap, batch, host=None):
    try:
        recording = cap.recording(batch, host)
    except TypeError:  # an older visblind (comparing before/after): no host batch
        recording = cap.recording(batch)
    with recording:
        with cap.envoy.trace(**batch.inputs):
            saved = cap.tap(batch)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[640, 1280, 2560])
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes b (each with every T)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--shape", default="default", choices=sorted(SHAPES))
    parser.add_argument("--widen-align", type=int, default=None,
                        help="head-width rounding of the recorder's widened call (default: 1 on CPU, 8 on GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 error measurement")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "T", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype, args.device)
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        method, seq_len, b = args.worker[0], int(args.worker[1]), int(args.worker[2])
        if method == "bf16":
            print(json.dumps(bf16_error(seq_len, args.device, args.shape)))
        else:
            print(json.dumps(run_one(method, seq_len, b, args.repeats, args.device, dtype, args.shape,
                                     args.widen_align)))
        return
    methods = [m for m in args.methods if m != "tl" or importlib.util.find_spec("transformer_lens")]
    if "tl" in args.methods and "tl" not in methods:
        print("transformer-lens is not installed: tl skipped (pip install transformer-lens)", file=sys.stderr)
    if "bare" not in methods:
        methods.insert(0, "bare")

    def worker(method: str, seq_len: int, b: int, peak_only: bool = False) -> dict:
        cmd = [sys.executable, __file__, "--worker", method, str(seq_len), str(b),
               "--repeats", "0" if peak_only else str(args.repeats), "--device", args.device, "--dtype", dtype,
               "--threads", str(args.threads), "--shape", args.shape]
        if args.widen_align is not None:
            cmd += ["--widen-align", str(args.widen_align)]
        # glibc's adaptive mmap threshold keeps freed blocks of up to 32 MiB in the heap, so ru_maxrss varies by
        # +-60 MiB run to run; a fixed threshold returns every large block at once and the peak repeats exactly
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if peak_only else None
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if res.returncode:
            sys.exit(f"{method} at b={b} T={seq_len} failed:\n{res.stderr[-2000:]}")
        print(f"  measured {method:8s} b={b} T={seq_len}{' (peak memory)' if peak_only else ''}", file=sys.stderr)
        return json.loads(res.stdout.strip().splitlines()[-1])

    cases = [(b, t) for b in args.batch for t in args.lengths]
    rows = {(m, b, t): worker(m, t, b) for b, t in cases for m in methods}
    if args.device == "cpu":  # peak memory from its own process, timings from the default allocator's
        for (m, b, t), r in rows.items():
            r["peak_mib"] = worker(m, t, b, peak_only=True)["peak_mib"]
    text = SHAPES[args.shape][1]
    print(f"device={args.device} dtype={dtype} shape={args.shape} (layers={text['num_hidden_layers']} "
          f"d={text['hidden_size']} visual={n_visual(args.shape)}) threads={args.threads or 'default'} "
          f"repeats={args.repeats} widen_align={args.widen_align or 'default'}")
    others = [m for m in methods if m != "bare"]
    # wall time is what a user waits; process CPU time is robust to other load on a shared machine. Time ratios are
    # the median over repeats of (method / the bare forward timed just before it in the same process, same weights);
    # [lo-hi] is their range. tl (marked *) cannot pair: median over repeats / median of the separate bare process.
    print("ratios to bare: wall time / CPU time / peak memory; CPU-time range over the paired repeats in brackets; "
          "syncs: host synchronisations per call inside the decoder span (CUDA: + whole call; CPU: visblind's/model's)")
    print(f"{'b':>3} {'T':>6} {'bare s':>7} {'bare cpu s':>10} {'bare MiB':>8}  " + "  ".join(f"{m:>44}" for m in others))

    def syncs(r: dict) -> str:
        c = r.get("syncs") or {}
        if not c:
            return ""
        return f"{c['inside']}/{c['total']}" if "total" in c else f"{c['ours']}/{c['model']}"

    for b, t in cases:
        a = rows[("bare", b, t)]
        if "oom" in a:
            print(f"{b:>3} {t:>6} bare forward out of memory: {a['oom']}")
            continue
        cells = []
        for m in others:
            r = rows[(m, b, t)]
            if "oom" in r:
                cells.append(f"{'out of memory':>44}")
                continue
            mem = r["peak_mib"] / max(a["peak_mib"], 1)
            if r["paired_cpu"]:
                lo, hi = min(r["paired_cpu"]), max(r["paired_cpu"])
                cells.append(f"{statistics.median(r['paired_wall']):>6.2f} {statistics.median(r['paired_cpu']):>6.3f} "
                             f"{mem:>6.2f} [{lo:.3f}-{hi:.3f}] {syncs(r):>9}")
            else:
                cells.append(f"{r['seconds'] / a['seconds']:>6.2f} {r['cpu_seconds'] / a['cpu_seconds']:>6.3f} "
                             f"{mem:>6.2f}*{'':>13} {syncs(r):>9}")
        print(f"{b:>3} {t:>6} {a['seconds']:>7.3f} {a['cpu_seconds']:>10.2f} {a['peak_mib']:>8.0f}  " + "  ".join(cells))
    print("absolute: " + "; ".join(
        f"{m} b={b} T={t}: " + (f"OOM ({r['oom']})" if "oom" in r else
                                f"{r['seconds']:.3f} s ({r['cpu_seconds']:.2f} s CPU), {r['peak_mib']:.0f} MiB")
        for (m, b, t), r in rows.items()))
    where = {f"{m} b={b} T={t}": r["syncs"]["where"] for (m, b, t), r in rows.items() if (r.get("syncs") or {}).get("where")}
    if where:
        print("where the syncs are (file:line -> count): " + json.dumps(where))
    if not args.no_bf16:
        err = worker("bf16", args.lengths[0], 1)
        print(f"bfloat16 capture shares vs float32 softmax of the same bf16 q/k, T={err['T']}: "
              f"max abs error {err['max_abs']:.1e} (per layer {', '.join(f'{e:.1e}' for e in err['per_layer'])})")


if __name__ == "__main__":
    main()
