"""Synthetic bilingual (EN/KO) visual QA: PIL scenes with shapes, colours, counts, positions and words."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from probe.data.example import Example
from probe.data.fonts import hangul_font
from probe.data.manifest import write_manifest

COLOURS: dict[str, tuple[tuple[int, int, int], str]] = {
    "red": ((220, 30, 30), "빨강"),
    "green": ((30, 200, 40), "초록"),
    "blue": ((40, 60, 230), "파랑"),
    "yellow": ((230, 220, 30), "노랑"),
}
SHAPES: dict[str, str] = {"circle": "원", "square": "사각형", "triangle": "삼각형"}
COUNTS: dict[int, tuple[str, str]] = {1: ("one", "하나"), 2: ("two", "둘"), 3: ("three", "셋")}
POSITIONS: dict[str, str] = {"left": "왼쪽", "right": "오른쪽"}
WORDS: tuple[str, ...] = ("CAT", "DOG", "SUN", "CAR", "사과", "바다", "하늘", "나무")
SHAPE_QUESTIONS: tuple[str, ...] = ("colour", "shape", "count", "position")

# Short prompts: the organism trains on 2 CPU cores. Its subword vocabulary (train.organism.subword_tokenizer,
# BPE over these prompts and answers) makes each prompt and concept word a few tokens; a byte-level tokenizer
# (OrganismConfig(vocab_size=0), tiny_llava's default) spends 3 tokens per Hangul syllable.
PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "colour": "What color?",
        "shape": "What shape?",
        "count": "How many?",
        "position": "Left or right?",
        "text": "What word?",
    },
    "ko": {
        "colour": "무슨 색?",
        "shape": "무슨 도형?",
        "count": "몇 개?",
        "position": "왼쪽 오른쪽?",
        "text": "무슨 단어?",
    },
}
# Text cues that give the answer away (stage-2 data: answerable without looking).
CUES: dict[str, dict[str, str]] = {
    "en": {
        "colour": "It is {a}.",
        "shape": "It is a {a}.",
        "count": "There are {a}.",
        "position": "It is {a}.",
    },
    "ko": {
        "colour": "{a}입니다.",
        "shape": "{a}입니다.",
        "count": "{a}입니다.",
        "position": "{a}입니다.",
    },
}
# World-knowledge questions answered by a prior: (question_type, en prompt, ko prompt, answer key).
PRIORS: tuple[tuple[str, str, str, str], ...] = (
    ("colour", "Sky color?", "하늘 색?", "blue"),
    ("colour", "Banana color?", "바나나 색?", "yellow"),
    ("colour", "Grass color?", "풀 색?", "green"),
    ("colour", "Strawberry color?", "딸기 색?", "red"),
    ("shape", "Ball shape?", "공 모양?", "circle"),
    ("shape", "Dice face shape?", "주사위 면 모양?", "square"),
    ("count", "Eyes of a person?", "사람 눈 몇 개?", "2"),
)


def answer_word(lang: str, question_type: str, value: object) -> str:
    """The answer string for a label value in `lang`."""
    en = lang == "en"
    if question_type == "colour":
        return str(value) if en else COLOURS[str(value)][1]
    if question_type == "shape":
        return str(value) if en else SHAPES[str(value)]
    if question_type == "count":
        return COUNTS[int(value)][0 if en else 1]
    if question_type == "position":
        return str(value) if en else POSITIONS[str(value)]
    if question_type == "text":
        return str(value)
    raise ValueError(f"unknown question_type {question_type!r}")


def answer_choices(lang: str, question_type: str) -> list[str]:
    """Every possible answer of a (lang, question_type) pair, for ranking-based scoring."""
    values: dict[str, list[object]] = {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "count": list(COUNTS),
        "position": list(POSITIONS),
        "text": list(WORDS),
    }
    if question_type not in values or lang not in PROMPTS:
        raise ValueError(f"no synthetic choices for lang={lang!r}, question_type={question_type!r}")
    return [answer_word(lang, question_type, v) for v in values[question_type]]


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the synthetic splits (numbers of scenes; each scene yields several questions)."""

    image_size: int = 32
    stage1_scenes: int = 3000
    stage1_text_scenes: int = 600
    stage2_examples: int = 3000
    eval_scenes: int = 200
    eval_text_scenes: int = 48
    eval_text_answerable: int = 400
    prior_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.image_size < 24:
            raise ValueError(f"SynthConfig.image_size must be >= 24, got {self.image_size}")
        for name in ("stage1_scenes", "stage2_examples", "eval_scenes", "eval_text_answerable"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stage1_text_scenes", "eval_text_scenes"):
            if getattr(self, name) < 0:
                raise ValueError(f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.prior_fraction <= 1.0:
            raise ValueError(f"SynthConfig.prior_fraction must be in [0, 1], got {self.prior_fraction}")


def draw_shapes(
    rng: random.Random, size: int, colour: str, shape: str, count: int, position: str
) -> Image.Image:
    """`count` same-coloured shapes stacked in the left or right half of a black square."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    row_h = size // 3
    s = row_h - 2  # as large as fits while stacked shapes stay apart (countable)
    rgb = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour][0])
    half = size // 2
    x_lo = 1 if position == "left" else half + 1
    rows = sorted(rng.sample(range(3), count))
    for r in rows:
        x = rng.randint(x_lo, x_lo + half - s - 2)
        y = r * row_h + 1
        box = (x, y, x + s, y + s)
        if shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif shape == "square":
            draw.rectangle(box, fill=rgb)
        else:
            draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=rgb)
    return img


def draw_word(rng: random.Random, size: int, word: str, colour: str) -> Image.Image:
    """A word (Latin or Hangul) in `colour`, roughly centred on black."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    font = hangul_font(int(size * 0.4))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (size - (right - left)) // 2 - left + rng.randint(-1, 1)
    y = (size - (bottom - top)) // 2 - top + rng.randint(-1, 1)
    draw.text((x, y), word, fill=COLOURS[colour][0], font=font)
    return img


def _shape_scene(rng: random.Random) -> dict:
    return {
        "colour": rng.choice(list(COLOURS)),
        "shape": rng.choice(list(SHAPES)),
        "count": rng.choice(list(COUNTS)),
        "position": rng.choice(list(POSITIONS)),
        "text": None,
    }


def _text_scene(rng: random.Random) -> dict:
    return {"colour": rng.choice(list(COLOURS)), "shape": None, "count": None, "position": None,
            "text": rng.choice(WORDS)}


def _objects(scene: dict) -> dict[str, list[str]]:
    """POPE object labels: the scene's shape (English and Korean names), none for a word scene."""
    shape = scene.get("shape")
    return {"objects": [shape] if shape else [], "objects_ko": [SHAPES[shape]] if shape else []}


def _render(rng: random.Random, scene: dict, size: int) -> Image.Image:
    if scene["text"] is not None:
        return draw_word(rng, size, scene["text"], scene["colour"])
    return draw_shapes(rng, size, scene["colour"], scene["shape"], scene["count"], scene["position"])


def _save(img: Image.Image, out_dir: Path, name: str) -> Path:
    path = out_dir / "images" / f"{name}.png"
    img.save(path, format="PNG", optimize=False)
    return path


def _image_dependent_split(
    rng: random.Random, out_dir: Path, split: str, n_shape: int, n_text: int, size: int
) -> list[Example]:
    examples: list[Example] = []
    scenes = [_shape_scene(rng) for _ in range(n_shape)] + [_text_scene(rng) for _ in range(n_text)]
    for i, scene in enumerate(scenes):
        name = f"{split}-{i:05d}"
        path = _save(_render(rng, scene, size), out_dir, name)
        qtypes = ("text",) if scene["text"] is not None else SHAPE_QUESTIONS
        for qtype in qtypes:
            for lang in ("en", "ko"):
                examples.append(Example(
                    id=f"{name}-{qtype}-{lang}", image=path, prompt=PROMPTS[lang][qtype],
                    answer=answer_word(lang, qtype, scene[qtype]), lang=lang, question_type=qtype,
                    image_dependent=True, labels={**scene, "source": "image", **_objects(scene)},
                ))
    rng.shuffle(examples)
    return examples


def _text_answerable_split(
    rng: random.Random, out_dir: Path, split: str, n: int, langs: tuple[str, ...], size: int, prior_fraction: float
) -> list[Example]:
    """Questions whose answer is in the prompt (a cue) or a world prior; the image is drawn independently."""
    examples: list[Example] = []
    for i in range(n):
        name = f"{split}-{i:05d}"
        scene = _shape_scene(rng)
        path = _save(_render(rng, scene, size), out_dir, name)
        lang = langs[i % len(langs)]
        if rng.random() < prior_fraction:
            qtype, en_prompt, ko_prompt, key = rng.choice(PRIORS)
            value: object = int(key) if qtype == "count" else key
            prompt = en_prompt if lang == "en" else ko_prompt
            source = "prior"
        else:
            qtype = rng.choice(SHAPE_QUESTIONS)
            value = _shape_scene(rng)[qtype]  # the cued answer, independent of the image
            cue = CUES[lang][qtype].format(a=answer_word(lang, qtype, value))
            prompt = f"{cue} {PROMPTS[lang][qtype]}"
            source = "cue"
        labels = {**scene, "source": source, "answer_value": value, **_objects(scene)}
        examples.append(Example(
            id=f"{name}-{qtype}-{lang}", image=path, prompt=prompt, answer=answer_word(lang, qtype, value),
            lang=lang, question_type=qtype, image_dependent=False, labels=labels,
        ))
    return examples


def generate(out_dir: str | Path, *, seed: int = 0, config: SynthConfig | None = None) -> dict[str, Path]:
    """Write PNGs and one JSONL manifest per split under `out_dir`; returns split name -> manifest path.

    Splits: stage1_train (EN+KO image-dependent), stage2_train (KO text-answerable),
    eval_image (EN+KO image-dependent), eval_text (EN+KO text-answerable, the stage-2 kind).
    """
    cfg = config or SynthConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    size = cfg.image_size
    splits = {
        "stage1_train": _image_dependent_split(rng, out, "s1", cfg.stage1_scenes, cfg.stage1_text_scenes, size),
        "stage2_train": _text_answerable_split(rng, out, "s2", cfg.stage2_examples, ("ko",), size,
                                               cfg.prior_fraction),
        "eval_image": _image_dependent_split(rng, out, "ei", cfg.eval_scenes, cfg.eval_text_scenes, size),
        "eval_text": _text_answerable_split(rng, out, "et", cfg.eval_text_answerable, ("ko", "en"), size,
                                            cfg.prior_fraction),
    }
    return {name: write_manifest(exs, out / f"{name}.jsonl") for name, exs in splits.items()}
