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
        raise BadExampleError(example.id, f"corrupt image {path}: {type(err).__name__}") from err


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


# The user-turn shapes a chat template may read, tried in this order: role messages whose content is a list of
# items (most instruct templates), role messages whose content is a string with the placeholder in it (older
# text-only templates), and a bare list of content items without roles (Qwen2-VL's base-model template).
CHAT_SHAPES = ("role messages with content lists", "role messages with string content", "a bare content list")
QUESTION, ANSWER = "\x00visblind-question\x00", "\x00visblind-answer\x00"  # sentinels located in the rendered text


def chat_template(processor: Any) -> tuple[str | None, str]:
    """The chat template prompts are built with, and the file it came from.

    The processor's template (chat_template.jinja / chat_template.json), else the tokenizer's
    (tokenizer_config.json): `train` saves the latter as the fine-tune's chat_template.jinja, so reading both
    gives a base and every checkpoint written from it the same prompt format.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    template = getattr(processor, "chat_template", None)
    files = ("chat_template.jinja", "chat_template.json", "processor_config.json")
    if not template:
        template = getattr(tokenizer, "chat_template", None)
        files = ("chat_template.jinja", "tokenizer_config.json")
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default") or next(iter(template.values()), None)
    if not template:
        return None, ""
    folder = str(getattr(tokenizer, "name_or_path", "") or "")
    where = Path(folder)
    for name in files:
        if (where / name).is_file() and (name.endswith(".jinja") or "chat_template" in (where / name).read_text("utf-8")):
            return template, str(where / name)
    return template, f"{folder or 'the processor'}: {files[-1]}"


def _user_turn(shape: str, text: str, placeholder: str) -> list[dict[str, Any]]:
    if shape == CHAT_SHAPES[0]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if shape == CHAT_SHAPES[1]:
        return [{"role": "user", "content": f"{placeholder}\n{text}"}]
    return [{"type": "image"}, {"type": "text", "text": text}]


def _render(processor: Any, template: str, messages: list[dict[str, Any]], generation: bool) -> str:
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=generation,
                                             tokenize=False)
    except Exception:  # a template that cannot read this shape (jinja raise_exception, a missing key, ...)
        return ""


def _chat_shape(processor: Any, template: str, source: str, placeholder: str) -> str:
    """The first shape of `CHAT_SHAPES` whose user turn renders the question and exactly one image placeholder."""
    for shape in CHAT_SHAPES:
        text = _render(processor, template, _user_turn(shape, QUESTION, placeholder), True)
        if QUESTION in text and text.count(placeholder) == 1:
            return shape
    tokenizer = getattr(processor, "tokenizer", processor)
    name = getattr(tokenizer, "name_or_path", "") or "the checkpoint"
    raise ValueError(f"{name}: the chat template in {source} renders no image placeholder {placeholder!r} for a "
                     f"user turn of an image and a question (tried {', '.join(CHAT_SHAPES)}); fix or remove that "
                     "template")


def prompt_text(processor: Any, example: Example, placeholder: str) -> str:
    """The prompt as the model sees it: chat template when the processor has one, else placeholder + prompt.

    The template's user turn is given in the first shape of `CHAT_SHAPES` it renders (one image placeholder),
    with the generation prompt. A prompt that already holds the placeholder is used as is without a template;
    more than one placeholder is an error (one image per example).
    """
    count = example.prompt.count(placeholder)
    if count > 1:
        raise BadExampleError(example.id, f"prompt has {count} image placeholders {placeholder!r} for 1 image")
    template, source = chat_template(processor)
    if template:
        text = example.prompt.replace(placeholder, "").strip()
        shape = _chat_shape(processor, template, source, placeholder)
        return _render(processor, template, _user_turn(shape, text, placeholder), True)
    if count == 1:
        return example.prompt
    return f"{placeholder}\n{example.prompt}"


def answer_separator(processor: Any, placeholder: str | None, prompt: str) -> str:
    """The text between the prompt and the answer: what the template's assistant turn puts after its generation prompt.

    SmolVLM's "Assistant:" turn renders "Assistant: a cat" (separator " "), Qwen2.5-VL's "<|im_start|>assistant\\n"
    none. Without a template, or with one that has no assistant turn (a bare content list), the answer follows
    the question after one space (none when the prompt ends in whitespace).
    """
    plain = "" if not prompt or prompt[-1].isspace() else " "
    template, source = chat_template(processor)
    if not template or placeholder is None:
        return plain
    shape = _chat_shape(processor, template, source, placeholder)
    if shape == CHAT_SHAPES[2]:
        return plain
    user = _user_turn(shape, QUESTION, placeholder)
    reply = [{"type": "text", "text": ANSWER}] if shape == CHAT_SHAPES[0] else ANSWER
    head = _render(processor, template, user, True)
    full = _render(processor, template, [*user, {"role": "assistant", "content": reply}], False)
    if not full.startswith(head) or ANSWER not in full[len(head):]:
        return plain  # the assistant turn does not continue the generation prompt: answer right after the prompt
    return full[len(head):].split(ANSWER)[0]


def answer_ids(tokenizer: Any, answer: str | None, prompt: str = "", separator: str = "") -> list[int]:
    """Token ids of separator + answer as they continue `prompt` (no special tokens), then eos; empty without answer.

    Tokenised in context: the ids of prompt + separator + answer past the prompt's own, so a leading space is
    the word-initial token the model sees at inference (SmolVLM's "Ġa", not "a"); the answer alone where the
    boundary merges.
    """
    if answer is None:
        return []
    text = separator + answer
    ids = None
    if prompt:
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        ids = full[len(head):] if full[: len(head)] == head else None
    if ids is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
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
    placeholder: str | None = None,
) -> Encoded:
    """Run the family's processor on each (image, prompt) and tokenise its answer; one-line errors per example.

    text: the prompt as the model sees it; segments: Segment codes of the prompt ids; images: the
    processor's `images=` argument for one PIL image (families differ in nesting); placeholder: the image
    placeholder `text` gave the chat template (it picks the answer's separator, see `answer_separator`).
    """
    out = Encoded()
    for ex in examples:
        image, prompt = load_image(ex), text(ex)  # both raise their own BadExampleError, named once
        try:
            enc = processor(images=images(image), text=[prompt], return_tensors="pt")
        except ValueError as err:
            raise BadExampleError(ex.id, f"processor refused the input: {str(err).splitlines()[0]}") from err
        ids = enc["input_ids"][0].tolist()
        if image_token_id not in ids:
            raise BadExampleError(ex.id, "no image tokens after processing")
        out.prompts.append(ids)
        out.segments.append(segments(ids))
        separator = answer_separator(processor, placeholder, prompt) if ex.answer is not None else ""
        out.answers.append(answer_ids(processor.tokenizer, ex.answer, prompt, separator))
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
