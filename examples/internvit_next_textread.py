"""Item 8: tiny InternVL with A0 / A2 / A5 encoders reading small Hangul/Latin text; same training budget."""
from __future__ import annotations

import random
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

from probe.data.fonts import hangul_font
from train.internvit_next import num_image_tokens, swap_vision_tower, variant

WORDS = ["가", "나", "다", "라", "A", "B", "K", "R"]
SIDE, PATCH, IMG_TOK, FIRST_ANS = 112, 8, 5, 10


def sample(rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images with one small glyph (14 px) at a random spot; labels index WORDS."""
    font = hangul_font(14)
    xs, ys = [], []
    for _ in range(n):
        y = rng.randrange(len(WORDS))
        img = Image.new("RGB", (SIDE, SIDE), (0, 0, 0))
        ImageDraw.Draw(img).text((rng.randint(0, SIDE - 18), rng.randint(0, SIDE - 20)), WORDS[y],
                                 fill=(255, 255, 255), font=font)
        xs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys)


def build(name: str) -> InternVLForConditionalGeneration:
    """Tiny random InternVL with the named encoder variant."""
    torch.manual_seed(0)
    vc = InternVLVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2,
                              image_size=[SIDE, SIDE], patch_size=[PATCH, PATCH])
    tc = Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, vocab_size=32)
    vlm = InternVLForConditionalGeneration(InternVLConfig(vision_config=vc.to_dict(), text_config=tc,
                                                          image_token_id=IMG_TOK, downsample_ratio=0.5))
    return swap_vision_tower(vlm, variant(name)) if name != "hf" else vlm


def run(name: str, steps: int = 400, batch: int = 16) -> dict[str, float]:
    """Train for a fixed budget, return test accuracy, tokens/image, seconds."""
    vlm = build(name).train()
    n_img = num_image_tokens(SIDE, SIDE, PATCH, 0.5)
    ids = torch.tensor([[1] + [IMG_TOK] * n_img + [2]])
    opt = torch.optim.AdamW(vlm.parameters(), lr=5e-4)
    rng = random.Random(0)
    t = time.perf_counter()
    for _ in tqdm(range(steps), desc=name, leave=False):
        x, y = sample(rng, batch)
        logits = vlm(input_ids=ids.expand(batch, -1), pixel_values=x).logits[:, -1, FIRST_ANS:FIRST_ANS + len(WORDS)]
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sec = time.perf_counter() - t
    vlm.eval()
    x, y = sample(random.Random(123), 256)
    with torch.no_grad():
        pred = vlm(input_ids=ids.expand(256, -1), pixel_values=x).logits[:, -1, FIRST_ANS:FIRST_ANS + len(WORDS)]
    return {"acc": (pred.argmax(-1) == y).float().mean().item(), "tokens": n_img, "sec": sec, "loss": loss.item()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for v in ("A0", "A2", "A5"):
        r = run(v)
        print(f"{v}: acc={r['acc']:.3f} (chance {1 / len(WORDS):.3f})  final_loss={r['loss']:.3f}  "
              f"tokens/img={r['tokens']}  train_sec={r['sec']:.1f}")
