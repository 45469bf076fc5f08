"""Visual-dependence evaluation on hand-built models whose answers are known in advance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from probe.data.example import Example
from probe.eval.dependence import evaluate_dependence, format_dependence_table, load_dependence, save_dependence
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment

SEP, EOS, VOCAB = 255, 256, 257
FLAGS = {"red": 0, "blue": 1, "green": 2, "blank": 3}
NAMES = {v: k for k, v in FLAGS.items()}


def _flag(image: Image.Image) -> int:
    r, g, b = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    if max(r, g, b) < 10:
        return FLAGS["blank"]
    return FLAGS[("red", "green", "blue")[int(np.argmax([r, g, b]))]]


class Oracle(nn.Module):
    """Next-token logits spelling a fixed word after SEP: the image's colour (seeing) or always 'red' (blind)."""

    def __init__(self, seeing: bool) -> None:
        super().__init__()
        self.seeing = seeing
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        for b, row in enumerate(input_ids.tolist()):
            flag = row[0]
            word = NAMES[flag] if self.seeing and flag != FLAGS["blank"] else "red"
            target = list(word.encode()) + [EOS]
            sep = row.index(SEP)
            for k, tok in enumerate(target):
                if sep + k < len(row):
                    logits[b, sep + k, tok] = 20.0
        return type("Out", (), {"logits": logits})()


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


COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def _examples() -> list[Example]:
    answers = ["red", "red", "blue", "green", "blue", "green"]
    exs = [Example(f"e{i}", Image.new("RGB", (8, 8), COLOURS[a]), "colour?", a, lang="en",
                   question_type="colour", image_dependent=True, labels={"choices": ["red", "green", "blue"]})
           for i, a in enumerate(answers)]
    exs.append(Example("t0", Image.new("RGB", (8, 8), COLOURS["blue"]), "It is red. colour?", "red", lang="en",
                       question_type="colour", image_dependent=False, labels={"choices": ["red", "green", "blue"]}))
    return exs


def test_seeing_model_is_fully_dependent(tmp_path: Path) -> None:
    ds = evaluate_dependence(FlagAdapter(Oracle(seeing=True), None), _examples(), batch_size=4, progress=False)
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
    ds = evaluate_dependence(FlagAdapter(Oracle(seeing=False), None), _examples(), batch_size=3, progress=False)
    acc = ds["accuracy"].sel(lang="en", question_type="colour", kind="image")
    assert float(acc.sel(condition="real")) == pytest.approx(2 / 6)
    assert float(ds["visual_dependence"].sel(lang="en", question_type="colour")) == pytest.approx(0.0)
    assert list(ds["prediction"].sel(condition="real").values) == ["red"] * 7


def test_missing_answer_is_an_error() -> None:
    ex = Example("x", Image.new("RGB", (4, 4)), "colour?", None)
    with pytest.raises(ValueError, match="'x'"):
        evaluate_dependence(FlagAdapter(Oracle(True), None), [ex], progress=False)
