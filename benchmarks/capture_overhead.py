"""Capture overhead: bare SDPA forward vs our capture vs eager output_attentions + reduce.

Prints time and peak-memory ratios measured in one run, on a LLaVA-architecture model of
realistic shape with random weights (8 decoder layers, d=512, 576 visual tokens + text).
Each (method, T) runs in a fresh subprocess so peak memory is that method's own
(CPU: ru_maxrss above the post-load baseline; CUDA: max_memory_allocated above the weights).

    python benchmarks/capture_overhead.py [--lengths 640 1280 2560] [--repeats 3] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

N_VISUAL = 576


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
    from probe.capture.reduce import pool_segments, query_positions
    from probe.models.base import ModelInputs
    from probe.models.llava import LlavaAdapter
    from probe.segments import Segment

    model = build(device, dtype)
    feed = inputs(model, seq_len, batch, device)
    segments = torch.where(feed["input_ids"] == model.config.image_token_id, int(Segment.VISUAL), int(Segment.TEXT))
    adapter = LlavaAdapter(model, None)
    spec = CaptureSpec(attn_share=True, attn_pattern=True, max_answer_tokens=0, resid=("pooled",), projector=False)
    cap = Capture(adapter, spec) if method == "capture" else None
    batch_inputs = ModelInputs(feed, segments, None, [str(i) for i in range(batch)])

    def once():
        with torch.inference_mode():
            if method == "bare":
                model(**feed)
            elif method == "capture":
                cap.collect(batch_inputs, _traced(cap, batch_inputs))
            else:  # what people do today
                out = model(**feed, output_attentions=True, output_hidden_states=True)
                onehot = torch.nn.functional.one_hot(segments, len(Segment)).float()
                shares = [a.float() @ onehot.unsqueeze(1) for a in out.attentions]
                last = [a[:, :, query_positions(segments, 0)[0, 0]].float() for a in out.attentions]
                pooled = [pool_segments(h, segments) for h in out.hidden_states[1:]]
                return shares, last, pooled

    if method == "eager":
        model.set_attn_implementation("eager")
    # the first call sets the peak (ru_maxrss is a high-water mark), later calls are timed
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"method": method, "T": seq_len, "seconds": min(times), "peak_mib": peak}


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
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.worker[0], int(args.worker[1]), args.batch, args.repeats, args.device, args.dtype)))
        return
    rows = {}
    for seq_len in args.lengths:
        for method in ("bare", "capture", "eager"):
            cmd = [sys.executable, __file__, "--worker", method, str(seq_len), "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype,
                   "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode:
                sys.exit(f"{method} at T={seq_len} failed:\n{res.stderr[-2000:]}")
            rows[(method, seq_len)] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"  measured {method:8s} T={seq_len}", file=sys.stderr)
    print(f"device={args.device} dtype={args.dtype} batch={args.batch} threads={args.threads or 'default'} "
          f"layers=8 d=512 visual={N_VISUAL}")
    print(f"{'T':>6} {'bare s':>8} {'capture s':>10} {'eager s':>8} {'(b)/(a) time':>13} {'(c)/(a) time':>13} "
          f"{'bare MiB':>9} {'capture MiB':>12} {'eager MiB':>10} {'(b)/(a) mem':>12} {'(c)/(a) mem':>12}")
    for seq_len in args.lengths:
        a, b, c = (rows[(m, seq_len)] for m in ("bare", "capture", "eager"))
        print(f"{seq_len:>6} {a['seconds']:>8.3f} {b['seconds']:>10.3f} {c['seconds']:>8.3f} "
              f"{b['seconds'] / a['seconds']:>13.2f} {c['seconds'] / a['seconds']:>13.2f} "
              f"{a['peak_mib']:>9.0f} {b['peak_mib']:>12.0f} {c['peak_mib']:>10.0f} "
              f"{b['peak_mib'] / max(a['peak_mib'], 1):>12.2f} {c['peak_mib'] / max(a['peak_mib'], 1):>12.2f}")
    first, last = args.lengths[0], args.lengths[-1]
    for m in ("capture", "eager"):
        g_t = rows[(m, last)]["seconds"] / rows[(m, first)]["seconds"]
        g_m = rows[(m, last)]["peak_mib"] / max(rows[(m, first)]["peak_mib"], 1e-9)
        print(f"{m}: T {first}->{last}: time x{g_t:.2f}, peak memory x{g_m:.2f}")


if __name__ == "__main__":
    main()
