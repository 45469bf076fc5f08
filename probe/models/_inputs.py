"""Input-building pieces shared by the adapters: images, prompts, answers, padding, segments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from probe.data.example import Example
from probe.models.base import BadExampleError, ModelInputs
from probe.segments import Segment


def load_image(example: Example) -> Image.Image:
    """The example's image as 8-bit RGB; BadExampleError when it is absent, missing or unreadable.

    High-bit-depth and float images are scaled to 8 bits (never clipped), see `to_rgb8`.
    """
    image = example.image
    if image is None:
        raise BadExampleError(example.id, "has no image")
    if isinstance(image, Image.Image):
        return to_rgb8(image, example.id)
    path = Path(image)
    if not path.is_file():
        raise BadExampleError(example.id, f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb8(img, example.id, path)
    except Image.DecompressionBombError as err:  # not an OSError: it escaped --skip-bad
        raise BadExampleError(example.id, f"image {path} refused: {str(err).split(', could')[0]} "
                                          "(PIL's decompression-bomb guard, Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BadExampleError(example.id, f"corrupt image {path}: {type(err).__name__}") from None


def to_rgb8(image: Image.Image, example_id: str, path: Path | None = None) -> Image.Image:
    """8-bit RGB; 16-bit, 32-bit and float grey images are scaled by their type's range.

    PIL's own convert("RGB") clips such images (a 16-bit PNG becomes almost all white). Integer modes:
    I;16* by 65535; I by 255, 65535 or 2^32-1, the smallest range holding its values. Float (F): values
    in [0, 1] by 1, else by 255 or 65535 likewise. Negative or non-finite values are refused.
    """
    mode = image.mode
    if not (mode.startswith("I") or mode == "F"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    where = f"image {path}" if path is not None else "image"
    if values.size == 0 or not np.isfinite(values).all() or values.min() < 0:
        raise BadExampleError(example_id, f"{where} ({mode}) has negative or non-finite values: cannot scale to 8 bits")
    top = float(values.max())
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "F" and top <= 1.0:
        scale = 1.0
    else:
        scale = next((r for r in (255.0, 65535.0, 4294967295.0) if top <= r), None)
        if scale is None:
            raise BadExampleError(example_id, f"{where} ({mode}) has values above 2^32-1: cannot scale to 8 bits")
    grey = np.rint(values * (255.0 / scale)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def prompt_text(processor: Any, example: Example, placeholder: str) -> str:
    """The prompt as the model sees it: chat template when the processor has one, else placeholder + prompt.

    A prompt that already holds the placeholder is used as is; more than one placeholder is an error
    (one image per example).
    """
    count = example.prompt.count(placeholder)
    if count > 1:
        raise BadExampleError(example.id, f"prompt has {count} image placeholders {placeholder!r} for 1 image")
    if getattr(processor, "chat_template", None):
        text = example.prompt.replace(placeholder, "").strip()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if count == 1:
        return example.prompt
    return f"{placeholder}\n{example.prompt}"


def answer_ids(tokenizer: Any, answer: str | None) -> list[int]:
    """Token ids of the answer (no special tokens) followed by eos; empty when there is no answer."""
    if answer is None:
        return []
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])


def assemble(
    examples: Sequence[Example],
    prompts: Sequence[Sequence[int]],
    prompt_segments: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str,
    extra: dict[str, Any],
) -> ModelInputs:
    """Pad prompt+answer rows into a batch with segments and labels (-100 except answer tokens)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [list(p) + list(a) for p, a in zip(prompts, answers)]
    segs = [list(s) + [int(Segment.ANSWER)] * len(a) for s, a in zip(prompt_segments, answers)]
    width = max(len(r) for r in rows)
    batch = len(rows)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    segments = torch.full((batch, width), int(Segment.PAD), dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    for b, (row, seg, ans) in enumerate(zip(rows, segs, answers)):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[b, span] = torch.tensor(row)
        mask[b, span] = 1
        segments[b, span] = torch.tensor(seg)
        if ans:
            lab = torch.full((len(row),), -100, dtype=torch.long)
            lab[len(row) - len(ans):] = torch.tensor(ans)
            labels[b, span] = lab
    has_answer = any(len(a) for a in answers)
    inputs = {"input_ids": ids, "attention_mask": mask, **extra}
    return ModelInputs(inputs, segments, labels if has_answer else None, [ex.id for ex in examples])


def segments_from_ids(ids: Sequence[int], roles: dict[int, Segment]) -> list[int]:
    """Segment code of each prompt token: `roles` maps special token ids to segments, the rest is TEXT."""
    return [int(roles.get(int(t), Segment.TEXT)) for t in ids]


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass
class Encoded:
    """Per-example processor outputs of a batch, before padding."""

    prompts: list[list[int]] = field(default_factory=list)
    segments: list[list[int]] = field(default_factory=list)
    answers: list[list[int]] = field(default_factory=list)
    features: list[Any] = field(default_factory=list)  # each example's processor output (BatchFeature)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # original (height, width)


def encode_examples(
    processor: Any,
    examples: Sequence[Example],
    image_token_id: int,
    *,
    text: Callable[[Example], str],
    segments: Callable[[list[int]], list[int]],
    images: Callable[[Any], Any] = lambda image: [image],
) -> Encoded:
    """Run the family's processor on each (image, prompt) and tokenise its answer; one-line errors per example.

    text: the prompt as the model sees it; segments: Segment codes of the prompt ids; images: the
    processor's `images=` argument for one PIL image (families differ in nesting).
    """
    out = Encoded()
    for ex in examples:
        image, prompt = load_image(ex), text(ex)  # both raise their own BadExampleError, named once
        try:
            enc = processor(images=images(image), text=[prompt], return_tensors="pt")
        except ValueError as err:
            raise BadExampleError(ex.id, f"processor refused the input: {str(err).splitlines()[0]}") from None
        ids = enc["input_ids"][0].tolist()
        if image_token_id not in ids:
            raise BadExampleError(ex.id, "no image tokens after processing")
        out.prompts.append(ids)
        out.segments.append(segments(ids))
        out.answers.append(answer_ids(processor.tokenizer, ex.answer))
        out.features.append(enc)
        out.image_sizes.append((image.height, image.width))
    return out


def assemble_encoded(
    examples: Sequence[Example], enc: Encoded, tokenizer: Any, padding_side: str, extra: dict[str, Any],
    *, real_positions: bool = True,
) -> ModelInputs:
    """Pad an `Encoded` batch; with `real_positions`, position ids count real tokens only.

    Counting real tokens only gives left and right padding the same RoPE phases (families whose
    model derives positions itself, like Qwen2-VL's M-RoPE, pass False).
    """
    batch = assemble(examples, enc.prompts, enc.segments, enc.answers, pad_id(tokenizer), padding_side, extra)
    batch.image_sizes = list(enc.image_sizes)
    if real_positions:
        batch.inputs["position_ids"] = (batch.inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    return batch
