"""Benchmark InternViT-Next A0 / A2 / A5 vs resolution: FLOPs, wall time, peak memory, visual tokens per image.

Small-width tower (hidden 64, 2 heads, 8 layers, MLP 256, patch 14) so that 224^2 .. 1344^2 fit in ~2 min on
one CPU thread. One image per forward (encoder + visual tokenizer, no projector/LM), no grad.
FLOPs: torch.utils.flop_counter with the SDPA math backend (it decomposes attention into counted matmuls).
Time: best of 2 runs with the default SDPA backend. Peak memory: rise of the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs) over the RSS before the forward, with glibc told to mmap every block >= 64 KiB
and trimmed first, so freed tensors leave RSS -- Linux/glibc only, weights excluded, allocator slack included.
Prints a table and the least-squares exponent b of `metric ~ pixels^b`, over all sides and over the top three.

    python benchmarks/internvit_next.py
"""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from train.internvit_next import convert_vision_model, variant
from train.internvit_next.tiny import tiny_vision

SIDES = (224, 448, 672, 896, 1344)
NAMES = ("A0", "A2", "A5")
LAYERS = 8
KEYS = ("flops", "sec", "mem", "tokens")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD fixed: large tensors are mmapped and unmapped on free


def peak_rss_mib(fn) -> float:
    """MiB by which the process's peak RSS rises above its current RSS while fn() runs."""
    gc.collect()
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def measure(name: str, side: int) -> dict[str, float]:
    """FLOPs, seconds, peak-RSS rise (MiB) and visual tokens of one image through encoder + tokenizer."""
    tower = convert_vision_model(tiny_vision(dim=64, heads=2, layers=LAYERS, patch=14, image=448, mlp_ratio=4),
                                 variant(name))
    x = torch.randn(1, 3, side, side)

    def run() -> int:
        last, _, plan = tower.encode([x[0]])
        _, layouts = tower.tokenizer(tower.patch_grids(plan.pad(last), plan.grids), [x[0]])
        return len(layouts[0])

    with torch.no_grad():
        mem = peak_rss_mib(run)
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            tokens = run()
        run()  # warm-up
        times = []
        for _ in range(2):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    return {"flops": counter.get_total_flops(), "sec": min(times), "mem": mem, "tokens": tokens}


def exponent(values: list[float], first: int = 0) -> float:
    """Slope of log(value) against log(pixels) over SIDES[first:]."""
    return float(np.polyfit(np.log([s * s for s in SIDES[first:]]), np.log(values[first:]), 1)[0])


def main() -> None:
    """Print the table and the fitted growth exponents."""
    torch.set_num_threads(1)
    print(f"InternViT-Next benchmark: hidden 64, 2 heads, {LAYERS} layers, patch 14, 1 image, 1 CPU thread; "
          f"A2/A5: 8x8-patch windows, full attention in layer {LAYERS - 1} only")
    print(f"{'var':4} {'side':>6} {'patches':>8} {'GFLOP':>9} {'sec':>8} {'peakMiB':>8} {'tokens':>7}")
    fits = {}
    for name in NAMES:
        rows = [measure(name, s) for s in SIDES]
        for s, r in zip(SIDES, rows, strict=True):
            print(f"{name:4} {s:5d}² {(s // 14) ** 2:8d} {r['flops'] / 1e9:9.2f} {r['sec']:8.3f} {r['mem']:8.1f} "
                  f"{r['tokens']:7d}")
        for first in (0, len(SIDES) - 3):
            fits[name, first] = [exponent([max(r[k], 1e-3) for r in rows], first) for k in KEYS]
    print("\ngrowth exponent b in metric ~ pixels^b (least squares; 1 = linear, 2 = quadratic)")
    print(f"{'var':4} {'sides':>11} " + " ".join(f"{k:>7}" for k in KEYS))
    for (name, first), f in fits.items():
        span = f"{SIDES[first]}-{SIDES[-1]}"
        print(f"{name:4} {span:>11} " + " ".join(f"{b:7.2f}" for b in f))


if __name__ == "__main__":
    main()
