"""Shrunken random-weight checkpoints built from real published config and processor files (tests/fixtures).

Each folder under tests/fixtures/real_processors/ holds a public checkpoint's config.json and processor files
exactly as published, with PROVENANCE.txt and its model card (licence). `build_checkpoint` keeps the model
class, vocabulary, special and image token ids, image and patch size, rope settings, projector, feature layer
and merge size of config.json, and shrinks only layer counts, hidden sizes and head counts; the result is saved
with the real processor files beside it, so it loads and prompts like the real checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "real_processors"
CHECKPOINTS = ("llava-1.5-7b-hf", "SmolVLM-256M-Instruct", "Qwen2-VL-2B")
FAMILY = {"llava-1.5-7b-hf": "llava", "SmolVLM-256M-Instruct": "idefics3", "Qwen2-VL-2B": "qwen2_vl"}

# text decoder: 2 layers, 4 query heads sharing 2 key/value heads (GQA kept); vision tower: 2 layers.
_TEXT = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2}
_VISION = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


def shrunken_config(name: str) -> dict:
    """The checkpoint's config.json with layer counts, hidden sizes and head counts reduced, nothing else changed."""
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    if cfg["model_type"] == "qwen2_vl":
        # M-RoPE's mrope_section (16, 24, 24) splits a head of 128 dimensions: the head size stays 128
        cfg.update(num_hidden_layers=2, hidden_size=256, intermediate_size=256, num_attention_heads=2,
                   num_key_value_heads=1, max_window_layers=2)
        cfg["vision_config"].update(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, hidden_size=256)
        return cfg
    text = cfg.setdefault("text_config", {})
    text.update(_TEXT)
    text.pop("head_dim", None)  # SmolVLM states 64: derived from the shrunken sizes instead
    cfg["vision_config"].update(_VISION)
    if cfg["model_type"] == "llava":
        cfg["vision_config"]["projection_dim"] = 32
        cfg["vision_config"]["num_hidden_layers"] = 3  # vision_feature_layer -2 reads a middle layer
    return cfg


def build_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    """A loadable checkpoint folder `out`: shrunken random weights (safetensors) + the real processor files."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    out.mkdir(parents=True, exist_ok=True)
    for f in (FIXTURES / name).iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    (out / "config.json").write_text(json.dumps(shrunken_config(name)))
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    (out / "config.json").write_text(json.dumps(shrunken_config(name)))  # the published file's form, shrunk
    return out


def photo(height: int, width: int, seed: int = 0, grey: bool = False):
    """A photo-like PIL image: smooth shapes and gradients with texture noise (no constant areas)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in rng.uniform(0, 3, 3)], -1)
    for _ in range(4):  # blobs
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        base += (((y - cy) ** 2 + (x - cx) ** 2) < r * r)[..., None] * rng.uniform(-1, 1, 3)
    img = np.clip((base - base.min()) / (np.ptp(base) + 1e-9) * 220 + rng.normal(0, 12, base.shape), 0, 255)
    image = Image.fromarray(img.astype(np.uint8))
    return image.convert("L") if grey else image


# (name, height, width, grey): the sizes the issue tried, 20x20 and a 600x60 strip included
IMAGE_SIZES = [("square", 512, 512, False), ("wide", 400, 600, False), ("odd", 300, 451, False),
               ("grey", 427, 640, True), ("strip", 60, 600, False), ("tiny", 20, 20, False)]
