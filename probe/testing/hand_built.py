"""Tiny random-weight VLMs from real transformers classes, and hand-built batches with segments.

Hand-fed models for the attention-hook and layout tests (`probe.testing.families` builds them with processors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.segments import Segment

IMAGE_TOKEN, START_TOKEN, END_TOKEN = 63, 61, 62
_TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads per kv head
    max_position_embeddings=256,
)


@dataclass
class TinyVLM:
    """A tiny model plus what a test needs to feed it by hand."""

    family: str
    model: nn.Module
    decoder_attn: list[nn.Module]
    image_span: list[int]  # token ids of one image in the sequence

    def pixel_inputs(self, batch: int) -> dict[str, Any]:
        """Random image inputs for `batch` rows, one 8x8 image each."""
        g = torch.Generator().manual_seed(1)
        if self.family == "qwen2_vl":
            # 4x4 patches of 2x2, temporal patch 2: [n_patches, 3*2*2*2]
            return {
                "pixel_values": torch.randn(batch * 16, 24, generator=g),
                "image_grid_thw": torch.tensor([[1, 4, 4]] * batch),
            }
        if self.family == "idefics3":
            return {"pixel_values": torch.randn(batch, 1, 3, 8, 8, generator=g)}
        return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=g)}


def build_tiny(family: str, *, sliding_window: int | None = None) -> TinyVLM:
    """A tiny random-weight model of `family`: llava, qwen2_vl, internvl or idefics3."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "llava":
        cfg = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=2
            ),
            text_config=tf.LlamaConfig(**_TEXT),
            image_token_index=IMAGE_TOKEN,
        )
        model = tf.LlavaForConditionalGeneration(cfg)
        layers, span = model.model.language_model.layers, [IMAGE_TOKEN] * 16
    elif family == "qwen2_vl":
        cfg = tf.Qwen2VLConfig(
            vision_config=dict(
                depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=2,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
            ),
            text_config=dict(**_TEXT, bos_token_id=None, eos_token_id=None, rope_scaling=dict(type="mrope", mrope_section=[1, 1, 2]), rope_theta=10000.0),
            bos_token_id=None, eos_token_id=None,
            image_token_id=IMAGE_TOKEN, vision_start_token_id=START_TOKEN, vision_end_token_id=END_TOKEN, video_token_id=59,
        )
        model = tf.Qwen2VLForConditionalGeneration(cfg)
        layers, span = model.model.language_model.layers, [START_TOKEN] + [IMAGE_TOKEN] * 4 + [END_TOKEN]
    elif family == "internvl":
        text = tf.Qwen2Config(**_TEXT)
        if sliding_window is not None:
            text = tf.Qwen2Config(**_TEXT, use_sliding_window=True, sliding_window=sliding_window, max_window_layers=0)
        cfg = tf.InternVLConfig(
            vision_config=tf.InternVLVisionConfig(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=[8, 8], patch_size=[2, 2]
            ),
            text_config=text,
            image_token_id=IMAGE_TOKEN,
            downsample_ratio=0.5,
        )
        model = tf.InternVLForConditionalGeneration(cfg)
        layers, span = model.model.language_model.layers, [START_TOKEN] + [IMAGE_TOKEN] * 4 + [END_TOKEN]
    elif family == "idefics3":
        cfg = tf.Idefics3Config(
            vision_config=tf.Idefics3VisionConfig(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=2
            ),
            text_config=tf.LlamaConfig(**_TEXT),
            image_token_id=IMAGE_TOKEN,
            scale_factor=2,
        )
        model = tf.Idefics3ForConditionalGeneration(cfg)
        layers, span = model.model.text_model.layers, [IMAGE_TOKEN] * 4
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    model = model.eval()
    return TinyVLM(family, model, [layer.self_attn for layer in layers], span)


# (text before image, text after image, answer) lengths per row: rows differ so padding is needed
ROW_LAYOUTS = {"ragged": [(3, 2, 3), (1, 4, 0), (2, 1, 2)], "even": [(3, 2, 3), (2, 3, 3)]}


def segment_of(token: int) -> Segment:
    """Segment of a prompt token id in the hand-built batches."""
    return {IMAGE_TOKEN: Segment.VISUAL, START_TOKEN: Segment.IMAGE_START, END_TOKEN: Segment.IMAGE_END}.get(token, Segment.TEXT)


def make_batch(tiny: TinyVLM, padding_side: str, layout: str = "ragged") -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Hand-built inputs, segments [batch, seq] and query positions [batch, 1 + 3] (last prompt, answers)."""
    g = torch.Generator().manual_seed(2)
    rows, segs = [], []
    for pre, post, ans in ROW_LAYOUTS[layout]:
        text = lambda n: torch.randint(1, 50, (n,), generator=g).tolist()  # noqa: E731
        ids = text(pre) + tiny.image_span + text(post)
        rows.append(ids + text(ans))
        segs.append([segment_of(t) for t in ids] + [Segment.ANSWER] * ans)
    seq = max(len(r) for r in rows)
    batch = len(rows)
    input_ids = torch.zeros((batch, seq), dtype=torch.long)
    attention_mask = torch.zeros((batch, seq), dtype=torch.long)
    segments = torch.full((batch, seq), int(Segment.PAD), dtype=torch.long)
    qpos = torch.full((batch, 4), -1, dtype=torch.long)
    for b, (ids, seg) in enumerate(zip(rows, segs)):
        off = seq - len(ids) if padding_side == "left" else 0
        input_ids[b, off : off + len(ids)] = torch.tensor(ids)
        attention_mask[b, off : off + len(ids)] = 1
        segments[b, off : off + len(ids)] = torch.tensor([int(s) for s in seg])
        answer = [off + i for i, s in enumerate(seg) if s == Segment.ANSWER]
        qpos[b, 0] = off + len(seg) - len(answer) - 1
        qpos[b, 1 : 1 + len(answer)] = torch.tensor(answer[:3], dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **tiny.pixel_inputs(batch)}
    if tiny.family == "qwen2_vl":  # M-RoPE needs to know which tokens are image tokens (1) vs text (0)
        inputs["mm_token_type_ids"] = (input_ids == IMAGE_TOKEN).long()
    return inputs, segments, qpos


def forward_with_hooks(model: nn.Module, inputs: dict[str, Any], hooks: list[Any]) -> None:
    """Run `model(**inputs)` without gradients, then remove the hook handles (also when the forward fails)."""
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
