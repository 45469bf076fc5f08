"""Open-ended answer matching and candidate planning, against hand-written expectations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probe.data.example import Example
from probe.eval.candidates import plan_candidates, read_choices_file
from probe.eval.normalise import answers_match, normalise


@pytest.mark.parametrize(("prediction", "reference", "lang", "match"), [
    ("직사각형입니다", "직사각형", "ko", True),
    ("직사각형입니다.", "직사각형", "ko", True),
    ("직사각형이에요", "직사각형", "ko", True),
    ("사과예요", "사과", "ko", True),
    ("사과는", "사과", "ko", True),
    ("빨강이다", "빨강", "ko", True),
    ("바", "바다", "ko", False),  # nothing is stripped from the reference
    ("바다", "바", "ko", True),  # ... but a reference plus a bare copula '다' matches (documented limitation)
    ("직사각형입니다", "삼각형", "ko", False),
    ("직사각형입니다", "직사각형", "en", False),  # the Korean endings apply to Korean rows only
    ("Red.", "red", "en", True),
    ("  RED!! ", "red", "en", True),
    ("reds", "red", "en", False),
    ("light  blue", "Light blue", "en", True),
    ("\u1100\u1161", "\uac00", "ko", True),  # decomposed jamo (NFD) equals the composed syllable (NFC)
])
def test_answers_match(prediction: str, reference: str, lang: str, match: bool) -> None:
    assert answers_match(prediction, reference, lang) is match


def test_normalise_keeps_inner_punctuation() -> None:
    assert normalise("  \"Don't.\" ") == "don't"


def _ex(i: int, answer: str, lang: str = "en", qtype: str = "colour", **labels) -> Example:
    return Example(f"e{i}", None, "q?", answer, lang=lang, question_type=qtype, labels=labels)


def test_candidates_follow_labels_then_file_then_manifest(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    path.write_text(json.dumps({"en": {"shape": ["circle", "square", "star"]}}), encoding="utf-8")
    exs = [_ex(0, "red", choices=["red", "blue"]), _ex(1, "blue", choices=["red", "blue", "pink"]),
           _ex(2, "circle", qtype="shape"), _ex(3, "star", qtype="shape"),
           _ex(4, "빨강", lang="ko"), _ex(5, "파랑", lang="ko"), _ex(6, "빨강.", lang="ko")]
    plans = plan_candidates(exs, choices_file=path)
    assert [p.source for p in plans] == ["labels", "labels", "file", "file", "manifest", "manifest", "manifest"]
    assert plans[1].choices == ("red", "blue", "pink")
    assert plans[2].choices == ("circle", "square", "star")
    assert sorted(normalise(c) for c in plans[4].choices) == ["빨강", "파랑"]  # '빨강' and '빨강.' are one answer
    assert all(p.rule == "ranked" for p in plans)


def test_open_ended_when_the_manifest_cannot_give_a_list() -> None:
    one = [_ex(i, "yes") for i in range(3)]  # one distinct answer: ranking would be trivially right
    many = [_ex(i, f"caption {i}", qtype="caption") for i in range(5)]
    plans = plan_candidates(one + many, max_choices=4)
    assert {p.rule for p in plans} == {"open"} and {p.source for p in plans} == {"none"}


@pytest.mark.parametrize(("exs", "message"), [
    ([_ex(0, "red", choices=["red", "blue"]), _ex(1, "blue")], r"1 of 2 examples have labels.choices but 'e1'"),
    ([_ex(0, "green", choices=["red", "blue"])], r"answer 'green' is not among its 2 candidates from labels"),
    ([_ex(0, "red", choices=["red", "Red."])], r"candidates 'red' and 'Red.' are the same answer"),
    ([_ex(0, "red", choices=["red"])], r"needs at least 2 candidate answers"),
])
def test_bad_candidates_are_one_line_errors(exs: list[Example], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        plan_candidates(exs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"choices.json: not valid JSON"),
    ('["red"]', r"expected \{lang"),
    ('{"en": ["red"]}', r"\['en'\] must map question types"),
    ('{"en": {"colour": "red"}}', r"\['en'\]\['colour'\] must be a list of strings"),
])
def test_bad_choices_file_names_what_and_where(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "choices.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_choices_file(path)
    with pytest.raises(ValueError, match="choices file not found"):
        read_choices_file(tmp_path / "absent.json")


def test_answer_missing_from_choices_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    path.write_text(json.dumps({"en": {"colour": ["red", "blue"]}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'e0': answer 'green' is not among its 2 candidates from file"):
        plan_candidates([_ex(0, "green")], choices_file=path)


def test_on_the_synthetic_set_the_manifest_gives_the_synthetic_lists(tmp_path: Path) -> None:
    """The organism's evaluation data: candidates from its manifest equal the generator's answer lists (so its
    chance levels and rankings are unchanged by taking candidates from the data)."""
    from probe.data.manifest import read_manifest
    from probe.data.synth import SynthConfig, answer_choices, generate

    cfg = SynthConfig(image_size=24, stage1_scenes=1, stage1_text_scenes=0, stage2_examples=1, eval_scenes=60,
                      eval_text_scenes=24, eval_text_answerable=40)
    paths = generate(tmp_path, seed=0, config=cfg)
    exs = read_manifest(paths["eval_image"]) + read_manifest(paths["eval_text"])
    for ex, plan in zip(exs, plan_candidates(exs)):
        assert plan.source == "manifest"
        assert sorted(plan.choices) == sorted(answer_choices(ex.lang, ex.question_type)), (ex.lang, ex.question_type)
