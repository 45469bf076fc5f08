"""Visual-dependence evaluation on hand-built models whose answers are known in advance."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torch import nn

from probe.data.example import Example
from probe.eval.dependence import (dependence_rows, evaluate_dependence, format_dependence_table, load_dependence,
                                  save_dependence)
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment

SEP, EOS, VOCAB = 255, 256, 257
# eight colours (an external 8-colour set), index = the flag token the adapter puts first; 8 = blank
PALETTE = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 30),
           "purple": (130, 30, 160), "orange": (240, 140, 20), "white": (245, 245, 245), "grey": (128, 128, 128)}
KOREAN = {"red": "빨강", "green": "초록", "blue": "파랑", "yellow": "노랑", "purple": "보라", "orange": "주황",
          "white": "하양", "grey": "회색"}
BLANK = len(PALETTE)
NAMES = dict(enumerate(PALETTE))


def _flag(image: Image.Image) -> int:
    rgb = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    if rgb.max() < 10:
        return BLANK
    return int(np.argmin([np.abs(rgb - np.array(c)).sum() for c in PALETTE.values()]))


class Oracle(nn.Module):
    """Spells a fixed word after SEP: the image's colour (seeing) or always 'red' (blind).

    Korean prompts (a Hangul byte in the prompt) get the Korean colour word, followed by `ko_suffix`
    (e.g. the copula '입니다'). `generate` decodes that word greedily; `forward` gives its logits.
    """

    def __init__(self, seeing: bool, ko_suffix: str = "") -> None:
        super().__init__()
        self.seeing = seeing
        self.ko_suffix = ko_suffix
        self.dummy = nn.Parameter(torch.zeros(1))

    def _target(self, row: list[int]) -> list[int]:
        flag = row[0]
        word = NAMES[flag] if self.seeing and flag != BLANK else "red"
        korean = any(0xE0 <= t < 0xF0 for t in row[1 : row.index(SEP)])  # a Hangul lead byte in the prompt
        if korean:
            word = KOREAN[word] + self.ko_suffix
        return list(word.encode()) + [EOS]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        for b, row in enumerate(input_ids.tolist()):
            sep = row.index(SEP)
            for k, tok in enumerate(self._target(row)):
                if sep + k < len(row):
                    logits[b, sep + k, tok] = 20.0
        return type("Out", (), {"logits": logits})()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **_: object):
        new = torch.full((len(input_ids), max_new_tokens), EOS)
        for b, row in enumerate(input_ids.tolist()):
            target = self._target(row)[:max_new_tokens]
            new[b, : len(target)] = torch.tensor(target)
        return torch.cat([input_ids, new], dim=1)


class ByteDecoder:
    """The test adapter's 'tokenizer': bytes below SEP are text, SEP/EOS are special."""

    @staticmethod
    def batch_decode(seqs: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [bytes(t for t in row if t < SEP).decode("utf-8", errors="replace") for row in seqs.tolist()]


class FlagAdapter(ModelAdapter):
    """Encodes [image flag] + prompt bytes + SEP + answer bytes + EOS."""

    name = "flag"
    model_types = ("flag",)
    sites = {}

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return nn.ModuleList()

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        rows, labs = [], []
        for ex in examples:
            image = ex.image if isinstance(ex.image, Image.Image) else Image.open(ex.image)
            prompt = [_flag(image)] + list(ex.prompt.encode()) + [SEP]
            ans = list(ex.answer.encode()) + [EOS] if ex.answer is not None else []
            rows.append(prompt + ans)
            labs.append([-100] * len(prompt) + ans)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), 0)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for b, (r, lab) in enumerate(zip(rows, labs)):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, : len(r)] = 1
            labels[b, : len(r)] = torch.tensor(lab)
        seg = torch.where(mask.bool(), int(Segment.TEXT), int(Segment.PAD))
        return ModelInputs({"input_ids": ids, "attention_mask": mask}, seg, labels, [e.id for e in examples])


COLOURS = {k: PALETTE[k] for k in ("red", "green", "blue")}


def _examples() -> list[Example]:
    answers = ["red", "red", "blue", "green", "blue", "green"]
    exs = [Example(f"e{i}", Image.new("RGB", (8, 8), COLOURS[a]), "colour?", a, lang="en",
                   question_type="colour", image_dependent=True, labels={"choices": ["red", "green", "blue"]})
           for i, a in enumerate(answers)]
    exs.append(Example("t0", Image.new("RGB", (8, 8), COLOURS["blue"]), "It is red. colour?", "red", lang="en",
                       question_type="colour", image_dependent=False, labels={"choices": ["red", "green", "blue"]}))
    return exs


def test_seeing_model_is_fully_dependent(tmp_path: Path) -> None:
    ds = evaluate_dependence(FlagAdapter(Oracle(seeing=True), ByteDecoder()), _examples(), batch_size=4, progress=False)
    sel = dict(lang="en", question_type="colour", kind="image")
    acc = ds["accuracy"].sel(sel)
    assert float(acc.sel(condition="real")) == pytest.approx(1.0)
    assert float(acc.sel(condition="blank")) == pytest.approx(2 / 6)  # blank -> 'red'; 2 of 6 answers are red
    assert float(acc.sel(condition="mismatched")) == pytest.approx(0.0)  # partner always has another answer
    assert float(ds["visual_dependence"].sel(lang="en", question_type="colour")) == pytest.approx(1.0)
    assert float(ds["chance"].sel(sel)) == pytest.approx(1 / 3)
    assert int(ds["n"].sel(lang="en", question_type="all", kind="text")) == 1
    # the text-answerable example shows blue but its answer is red: a seeing model gets it wrong
    assert float(ds["accuracy"].sel(lang="en", question_type="colour", kind="text", condition="real")) == 0.0
    save_dependence(ds, tmp_path / "store.zarr")
    back = load_dependence(tmp_path / "store.zarr")
    np.testing.assert_allclose(back["accuracy"].values, ds["accuracy"].values, equal_nan=True)
    assert format_dependence_table(ds).row_count == 4  # colour and all, image and text


def test_blind_model_has_no_dependence() -> None:
    ds = evaluate_dependence(FlagAdapter(Oracle(seeing=False), ByteDecoder()), _examples(), batch_size=3, progress=False)
    acc = ds["accuracy"].sel(lang="en", question_type="colour", kind="image")
    assert float(acc.sel(condition="real")) == pytest.approx(2 / 6)
    assert float(ds["visual_dependence"].sel(lang="en", question_type="colour")) == pytest.approx(0.0)
    assert list(ds["prediction"].sel(condition="real").values) == ["red"] * 7


def test_missing_answer_is_an_error() -> None:
    ex = Example("x", Image.new("RGB", (4, 4)), "colour?", None)
    with pytest.raises(ValueError, match="'x'"):
        evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), [ex], progress=False)


def _eight_colour_set(n_images: int = 16, *, langs: tuple[str, ...] = ("en", "ko"), labelled: bool = True,
                      ko_answer_suffix: str = "") -> list[Example]:
    """An external 8-colour VQA set: every image asked in each language, no candidate lists anywhere."""
    names = list(PALETTE)
    exs = []
    for i in range(n_images):
        colour = names[i % len(names)]
        image = Image.new("RGB", (8, 8), PALETTE[colour])
        for lang in langs:
            answer = colour if lang == "en" else KOREAN[colour] + ko_answer_suffix
            exs.append(Example(f"img{i}-{lang}", image, "What colour?" if lang == "en" else "무슨 색?", answer,
                               lang=lang, question_type="colour", image_dependent=True if labelled else None,
                               labels={"group": f"img{i}"}))
    return exs


def test_manifest_answers_are_the_candidates_and_chance_is_one_over_k() -> None:
    """8 colours in the data: ranked among those 8 (not the synthetic set's 4), chance exactly 1/8, per language."""
    ds = evaluate_dependence(FlagAdapter(Oracle(seeing=True), ByteDecoder()), _eight_colour_set(), batch_size=8,
                             progress=False)
    for lang in ("en", "ko"):
        sel = dict(lang=lang, question_type="colour")
        assert str(ds["rule"].sel(sel).item()) == "ranked" and str(ds["source"].sel(sel).item()) == "manifest"
        assert int(ds["k_min"].sel(sel)) == int(ds["k_max"].sel(sel)) == 8
        assert float(ds["chance"].sel(**sel, kind="image")) == pytest.approx(1 / 8, abs=1e-12)
        assert float(ds["accuracy"].sel(**sel, kind="image", condition="real")) == pytest.approx(1.0)
        assert float(ds["visual_dependence"].sel(sel)) == pytest.approx(1.0)
    # predictions are the manifest's own answer strings, Korean ones included
    assert set(ds["prediction"].sel(condition="real").values) == set(PALETTE) | set(KOREAN.values())


def test_intervals_resample_images_not_examples() -> None:
    """Two question types on one image are one unit: the 'all' row counts 16 images for 32 examples."""
    exs = _eight_colour_set(langs=("en",))
    exs += [replace(ex, id=ex.id + "-again", question_type="colour2") for ex in exs]
    ds = evaluate_dependence(FlagAdapter(Oracle(seeing=False), ByteDecoder()), exs, batch_size=8, progress=False)
    sel = dict(lang="en", question_type="all", kind="image")
    assert int(ds["n"].sel(sel)) == 32 and int(ds["n_units"].sel(sel)) == 16
    acc = ds["accuracy"].sel(**sel, condition="real")
    lo, hi = float(ds["accuracy_low"].sel(**sel, condition="real")), float(ds["accuracy_high"].sel(**sel, condition="real"))
    assert float(acc) == pytest.approx(2 / 16)  # blind: always 'red', 2 of 16 images are red
    assert lo <= float(acc) <= hi and hi > lo
    for v in ("visual_dependence", "visual_dependence_low", "visual_dependence_high"):
        assert float(ds[v].sel(lang="en", question_type="all")) == pytest.approx(0.0)


def test_korean_copula_is_matched_open_ended() -> None:
    """Too many distinct answers to rank: open-ended, and '빨강입니다' counts as '빨강'; no chance level."""
    adapter = FlagAdapter(Oracle(seeing=True, ko_suffix="입니다"), ByteDecoder())
    ds = evaluate_dependence(adapter, _eight_colour_set(langs=("ko",)), max_choices=4, batch_size=8, progress=False)
    sel = dict(lang="ko", question_type="colour", kind="image")
    assert str(ds["rule"].sel(lang="ko", question_type="colour").item()) == "open"
    assert all(p.endswith("입니다") for p in ds["prediction"].sel(condition="real").values)
    assert float(ds["accuracy"].sel(**sel, condition="real")) == pytest.approx(1.0)
    assert float(ds["accuracy"].sel(**sel, condition="mismatched")) == pytest.approx(0.0)
    assert float(ds["visual_dependence"].sel(lang="ko", question_type="colour")) == pytest.approx(1.0)
    assert np.isnan(float(ds["chance"].sel(sel)))


def test_rows_never_mix_candidate_sources() -> None:
    exs = _eight_colour_set(langs=("en",))
    exs[3] = replace(exs[3], labels={"choices": list(PALETTE)})
    with pytest.raises(ValueError, match="lang='en' question_type='colour'.*cannot mix"):
        evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), exs, progress=False)
    ranked_some = lambda ex: ["red", "green"] if ex.id.startswith("img1") else None  # noqa: E731
    with pytest.raises(ValueError, match="cannot mix scoring rules"):
        evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), exs, choices=ranked_some, progress=False)


def test_all_row_only_when_its_question_types_share_a_rule() -> None:
    """Colour ranked (8 answers), 'name' open-ended (16 distinct answers > max_choices): no pooled 'all' row."""
    exs = _eight_colour_set(langs=("en",))
    exs += [replace(ex, id=ex.id + "-name", question_type="name", answer=f"image {i}") for i, ex in enumerate(exs)]
    ds = evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), exs, max_choices=10, batch_size=8,
                             progress=False)
    assert str(ds["rule"].sel(lang="en", question_type="all").item()) == "mixed"
    assert int(ds["n"].sel(lang="en", question_type="all").sum()) == 0
    assert [str(ds["rule"].sel(lang="en", question_type=q).item()) for q in ("colour", "name")] == ["ranked", "open"]
    ko_only = _eight_colour_set(langs=("ko",))
    both = evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), exs + ko_only, max_choices=10, batch_size=8,
                               progress=False)
    assert str(both["rule"].sel(lang="ko", question_type="name").item()) == ""  # no Korean "name" questions


def test_choices_file_is_used_and_named(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    path.write_text(json.dumps({"en": {"colour": list(PALETTE) + ["black", "pink"]}}), encoding="utf-8")
    ds = evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), _eight_colour_set(), choices_file=path,
                             batch_size=8, progress=False)
    assert str(ds["source"].sel(lang="en", question_type="colour").item()) == "file"
    assert float(ds["chance"].sel(lang="en", question_type="colour", kind="image")) == pytest.approx(1 / 10)
    assert str(ds["source"].sel(lang="ko", question_type="colour").item()) == "manifest"  # not in the file


def test_manifest_without_image_dependent_gives_numbers_not_dashes() -> None:
    """No image_dependent field, open-ended Korean rows: every cell a number, no 'Mean of empty slice' warning."""
    exs = _eight_colour_set(labelled=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ds = evaluate_dependence(FlagAdapter(Oracle(True), ByteDecoder()), exs, max_choices=4, batch_size=8,
                                 progress=False)
        console = Console(record=True, width=250)
        console.print(format_dependence_table(ds))
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith(("en", "ko"))]
    assert len(rows) == 4  # en/ko x colour/all, image kind only
    assert all("100.0%" in row for row in rows) and "Scoring: open (exact match)" in " ".join(text.split())
    shares = [r[k] for r in dependence_rows(ds) for k in ("real", "blank", "mismatched", "visual_dependence")]
    assert all(np.isfinite(shares))  # every share is a number
    assert "[low–high] 95%" in text and "32 examples without image_dependent" in text
