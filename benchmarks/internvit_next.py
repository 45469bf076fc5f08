"""Benchmark InternViT-Next variants (FLOPs, wall time, RSS delta, tokens/image) vs resolution."""
from __future__ import annotations

import gc
import time

import numpy as np
import psutil
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import InternVLVisionConfig, InternVLVisionModel

from train.internvit_next import convert_vision_model, num_image_tokens, variant

SIDES = (224, 448, 896, 1344)


def small_vision() -> InternVLVisionModel:
    """Small-width InternViT (hidden 64, 4 layers, patch 14, 448 native)."""
    torch.manual_seed(0)
    cfg = InternVLVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                               image_size=[448, 448], patch_size=[14, 14])
    return InternVLVisionModel(cfg).eval()


def measure(name: str, side: int) -> dict[str, float]:
    """FLOPs, seconds and RSS growth (psutil, MiB; coarse: the allocator reuses freed pages) of one forward."""
    model = convert_vision_model(small_vision(), variant(name)).eval()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        fc = FlopCounterMode(display=False)
        with fc, sdpa_kernel(SDPBackend.MATH):  # math path decomposes into counted matmuls
            model(pixel_values=x)
        gc.collect()
        rss0 = psutil.Process().memory_info().rss
        t = time.perf_counter()
        model(pixel_values=x)
        sec = time.perf_counter() - t
        rss = (psutil.Process().memory_info().rss - rss0) / 2**20
    return {"flops": fc.get_total_flops(), "sec": sec, "rss_mib": rss,
            "tokens": num_image_tokens(side, side, 14, 0.5)}


def main() -> None:
    """Print the table and the fitted growth exponent of FLOPs/time vs pixel count."""
    torch.set_num_threads(1)
    for name in ("A0", "A2", "A5"):
        rows = [measure(name, s) for s in SIDES]
        for s, r in zip(SIDES, rows, strict=True):
            print(f"{name} {s:5d}^2  GFLOP={r['flops'] / 1e9:8.2f}  sec={r['sec']:7.3f}  "
                  f"rssΔ={r['rss_mib']:7.1f}MiB  tokens/img={r['tokens']}")
        px = np.log([s * s for s in SIDES[1:]])
        ef = np.polyfit(px, np.log([r["flops"] for r in rows[1:]]), 1)[0]
        et = np.polyfit(px, np.log([r["sec"] for r in rows[1:]]), 1)[0]
        print(f"{name}: FLOPs ~ pixels^{ef:.2f}, time ~ pixels^{et:.2f} (fit over {SIDES[1:]})")


if __name__ == "__main__":
    main()
