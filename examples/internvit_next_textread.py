"""Item 8 of the InternViT-Next issue: does the encoder variant change how well a tiny InternVL reads small text?

Task: a 112x112 black image holds one small glyph (Hangul syllable or Latin capital, 12 classes, 14 px font)
at a random place; the model answers with the glyph (byte tokens + eos). A tiny InternVL (probe's
`tiny_internvl`: 2-layer InternViT width 64 at patch 8 -> 14x14 patches, 2-layer Qwen2 width 64) gets its tower
swapped for A0, A2 (2-D RoPE + 4x4-patch windows in layer 0, full attention in layer 1) or A5 (A2 + spatial
tokens + adaptive compression to half the grid tokens), then trains from the same random init with
`train.sft` (full fine-tuning, same examples, same steps) -- the token count is fixed per variant at a fixed
image size, so `configure_processor` makes the probe adapter build matching prompts and sft works unchanged.
Accuracy: exact match of the whole answer under teacher forcing (= what greedy decoding would produce).
--font 20 makes the glyphs larger (used while calibrating; it did not make the task learnable in budget either).

    python examples/internvit_next_textread.py [--steps 1200] [--out /tmp/internvit_next_textread]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from probe.data.example import Example
from probe.data.fonts import hangul_font
from probe.models.registry import adapter_for
from probe.models.tiny import tiny_internvl
from train.internvit_next import configure_processor, image_token_count, swap_vision_tower, variant
from train.sft import SFTConfig, sft

GLYPHS = list("가나다라마바") + list("AKRSXZ")
SIDE, PATCH, FONT, VISION_DIM, LR = 112, 8, 14, 64, 1e-3
VARIANTS = {"A0": variant("A0"), "A2": variant("A2", window=4), "A5": variant("A5", window=4)}


def make_examples(n: int, seed: int, size: int = FONT) -> list[Example]:
    """n images with one glyph (size px font) at a random position; answer = the glyph."""
    rng = random.Random(seed)
    font = hangul_font(size)
    out = []
    for i in range(n):
        g = rng.choice(GLYPHS)
        img = Image.new("RGB", (SIDE, SIDE), (0, 0, 0))
        ImageDraw.Draw(img).text((rng.randint(2, SIDE - size - 4), rng.randint(2, SIDE - size - 6)), g,
                                 fill=(255, 255, 255), font=font)
        out.append(Example(f"{seed}-{i}", img, "Read the text.", answer=g, lang="ko" if g > "~" else "en"))
    return out


@torch.no_grad()
def accuracy(adapter, examples: list[Example], batch: int = 50) -> float:
    """Share of examples whose every answer token is the argmax (teacher forcing)."""
    adapter.model.eval()
    hits = 0
    for i in range(0, len(examples), batch):
        inp = adapter.build_inputs(examples[i:i + batch], padding_side="right")
        logits = adapter.model(**inp.inputs).logits[:, :-1]
        labels = inp.labels[:, 1:]
        ok = (logits.argmax(-1) == labels) | (labels == -100)
        hits += int(ok.all(-1).sum())
    return hits / len(examples)


def run(name: str, train: list[Example], test: list[Example], steps: int, out: Path) -> dict[str, float]:
    """Train one variant from the shared init; return accuracy, tokens per image and seconds."""
    model, processor = tiny_internvl(seed=0, image_size=SIDE, patch_size=PATCH, vision_dim=VISION_DIM, text_layers=2,
                                     text_dim=64)
    cfg = VARIANTS[name]
    torch.manual_seed(0)
    swap_vision_tower(model, cfg)
    configure_processor(processor, cfg, PATCH)
    adapter = adapter_for(model, processor)
    conf = SFTConfig(lr=LR, batch_size=16, max_steps=steps, warmup_steps=20, threads=1, device="cpu",
                     checkpoint_every=10 * steps, log_every=50, seed=0)
    result = sft(adapter, train, conf, out / name, resume=False, progress=False)
    by_lang = {lang: accuracy(adapter, [e for e in test if e.lang == lang]) for lang in ("ko", "en")}
    return {"acc": accuracy(adapter, test), "acc_ko": by_lang["ko"], "acc_en": by_lang["en"],
            "tokens": image_token_count(cfg, SIDE, SIDE, PATCH), "train_sec": result.seconds,
            "final_loss": sum(result.losses[-20:]) / 20}


def main() -> None:
    """Train A0, A2, A5 for the same budget and print one line each (also written to out/results.json)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--out", type=Path, default=Path("/tmp/internvit_next_textread"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--font", type=int, default=FONT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = make_examples(3000, 1, args.font), make_examples(300, 2, args.font)
    t0 = time.perf_counter()
    results = {}
    for name in args.variants:
        results[name] = r = run(name, train, test, args.steps, args.out)
        print(f"{name}: acc={r['acc']:.3f} (ko {r['acc_ko']:.3f}, en {r['acc_en']:.3f}; chance {1 / len(GLYPHS):.3f})"
              f"  tokens/img={r['tokens']}  train_sec={r['train_sec']:.1f}  final_loss={r['final_loss']:.3f}",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"steps": args.steps, "results": results}, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
