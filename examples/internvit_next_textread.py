"""Item 8 of the InternViT-Next issue: does the encoder variant change how well a tiny InternVL reads small text?

Task: a 112x112 black image holds one small white glyph -- 4 Hangul syllables (가나다라) + 4 Latin capitals
(AKRS), 20 px font (12-18 px of ink, about a seventh of the side) -- and the model answers with the glyph as byte
tokens + eos (a Hangul answer is 3 UTF-8 bytes, a Latin one 1 byte). By default the glyph sits at ONE fixed
place (top-left, --positions 1): calibration found no A0 setting that learned to read within the CPU budget
once the place varied (2x2 or 3x3 grid or anywhere; 14, 20, 28 px fonts; lr 1e-3 or 3e-4; up to 600 steps,
1,200 in an earlier 12-class run), so with the defaults the 8 test images are the same 8 images seen in
training: this measures whether a variant learns to map a small glyph to its text at all within the budget,
NOT generalisation to new positions.
Model: probe's `tiny_internvl` (InternViT width 64, 2 layers, patch 8 -> 14x14 patches -> 49 pixel-unshuffle
tokens; Qwen2 decoder width 64, 2 layers) with its tower swapped for A0, A2 (2-D RoPE + 4x4-patch windows in
layer 0, full attention in the last layer) or A5 (A2 + spatial tokens + adaptive compression to half the grid
tokens), trained from the same random init with `train.sft` (full fine-tuning, same examples and order, same
steps, lr 3e-4 -- at lr 1e-3 a 20 px glyph stayed at the answer prior even at one fixed place).
`configure_processor` makes the probe adapter build prompts with each variant's token count, so sft works
unchanged.
Measures: accuracy = exact match of the whole answer under teacher forcing (= what greedy decoding would
produce), overall and per script; the same on the test images blanked to black (a model that reads the image
drops to the answer prior there, ~chance); image tokens per image; training seconds (1 CPU thread); mean loss
of the last 20 steps. Options change the task and model (see --help), applied identically to every variant.

    python examples/internvit_next_textread.py [--steps 1000] [--out /tmp/internvit_next_textread]
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
from probe.testing import tiny_internvl
from train.internvit_next import (
    configure_processor,
    image_token_count,
    swap_vision_tower,
    variant,
)
from train.sft import SFTConfig, sft

HANGUL, LATIN = "가나다라마바사아", "AKRSXZHM"
PATCH = 8
VARIANTS = {"A0": variant("A0"), "A2": variant("A2", window=4), "A5": variant("A5", window=4)}


def glyphs(per_script: int) -> list[str]:
    """The glyph classes: the first per_script Hangul syllables and Latin capitals."""
    return list(HANGUL[:per_script]) + list(LATIN[:per_script])


def make_examples(n: int, seed: int, a: argparse.Namespace) -> list[Example]:
    """n side x side black images with one white glyph (a.font px) at a random place; answer = the glyph.

    a.positions = k > 0 puts the glyph's top-left on one of k x k evenly spaced points (plus +-a.jitter px);
    0 puts it anywhere inside the image.
    """
    rng = random.Random(seed)
    font, classes, side, size = hangul_font(a.font), glyphs(a.glyphs), a.side, a.font
    lo, hi = 2, side - size - 6
    out = []
    for i in range(n):
        g = rng.choice(classes)
        if a.positions > 0:
            pts = [lo + round(j * (hi - lo) / max(1, a.positions - 1)) for j in range(a.positions)]
            x, y = (min(hi, max(lo, rng.choice(pts) + rng.randint(-a.jitter, a.jitter))) for _ in range(2))
        else:
            x, y = rng.randint(lo, hi), rng.randint(lo, hi)
        img = Image.new("RGB", (side, side), (0, 0, 0))
        ImageDraw.Draw(img).text((x, y), g, fill=(255, 255, 255), font=font)
        out.append(Example(f"{seed}-{i}", img, "Read the text.", answer=g, lang="ko" if g > "~" else "en"))
    return out


def blanked(examples: list[Example]) -> list[Example]:
    """The same examples with an all-black image (what a model that ignores the image would answer)."""
    return [Example(e.id, Image.new("RGB", e.image.size), e.prompt, answer=e.answer, lang=e.lang) for e in examples]


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


def build_model(a: argparse.Namespace):
    """probe's tiny_internvl at the requested size; vision depth != 2 rebuilds it from its config (seed 0)."""
    model, processor = tiny_internvl(seed=0, image_size=a.side, patch_size=PATCH, vision_dim=a.vision_dim,
                                     text_layers=a.text_layers, text_dim=a.text_dim)
    if a.vision_layers != model.config.vision_config.num_hidden_layers:
        config = model.config
        config.vision_config.num_hidden_layers = a.vision_layers
        torch.manual_seed(0)
        model = type(model)(config).eval()
    return model, processor


def run(name: str, train: list[Example], test: list[Example], a: argparse.Namespace) -> dict[str, float]:
    """Train one variant from the shared init; return accuracies, tokens per image, seconds and loss."""
    model, processor = build_model(a)
    cfg = VARIANTS[name]
    torch.manual_seed(0)
    swap_vision_tower(model, cfg)
    configure_processor(processor, cfg, PATCH)
    adapter = adapter_for(model, processor)
    conf = SFTConfig(lr=a.lr, batch_size=a.batch, max_steps=a.steps, warmup_steps=a.warmup, threads=1,
                     device="cpu", checkpoint_every=10 * a.steps, log_every=50, seed=0)
    result = sft(adapter, train, conf, a.out / name, resume=False, progress=False)
    by_lang = {lang: accuracy(adapter, [e for e in test if e.lang == lang]) for lang in ("ko", "en")}
    tail = result.losses[-20:]
    return {"acc": accuracy(adapter, test), "acc_ko": by_lang["ko"], "acc_en": by_lang["en"],
            "acc_blank": accuracy(adapter, blanked(test)),
            "tokens": image_token_count(cfg, a.side, a.side, PATCH), "train_sec": result.seconds,
            "final_loss": sum(tail) / len(tail)}


def main() -> None:
    """Train the variants for the same budget and print one line each (also written to out/results.json)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/internvit_next_textread"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--glyphs", type=int, default=4, help="glyph classes per script (Hangul and Latin), <= 8")
    ap.add_argument("--font", type=int, default=20, help="glyph font size in px")
    ap.add_argument("--side", type=int, default=112, help="image side in px (multiple of 16)")
    ap.add_argument("--positions", type=int, default=1, help="k: glyph on a k x k grid of places; 0 = anywhere")
    ap.add_argument("--jitter", type=int, default=0, help="+- px around a grid place (with --positions)")
    ap.add_argument("--vision-dim", type=int, default=64)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--text-dim", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-n", type=int, default=3000)
    ap.add_argument("--test-n", type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, test = make_examples(a.train_n, 1, a), make_examples(a.test_n, 2, a)
    t0 = time.perf_counter()
    results = {}
    for name in a.variants:
        results[name] = r = run(name, train, test, a)
        print(f"{name}: acc={r['acc']:.3f} (ko {r['acc_ko']:.3f}, en {r['acc_en']:.3f}; blank image "
              f"{r['acc_blank']:.3f}; chance {1 / len(glyphs(a.glyphs)):.3f})  tokens/img={r['tokens']}  "
              f"train_sec={r['train_sec']:.1f}  final_loss={r['final_loss']:.3f}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    (a.out / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
