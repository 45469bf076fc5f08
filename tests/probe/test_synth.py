"""Synthetic bilingual QA: determinism, label consistency, and text-answerability of the stage-2 kind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from probe.data.manifest import read_manifest
from probe.data.synth import SynthConfig, answer_choices, answer_word, generate

SMALL = SynthConfig(stage1_scenes=12, stage1_text_scenes=4, stage2_examples=20, eval_scenes=6, eval_text_scenes=2,
                    eval_text_answerable=10)


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", seed=3, config=SMALL)
    generate(tmp_path / "b", seed=3, config=SMALL)
    generate(tmp_path / "c", seed=4, config=SMALL)
    a, b, c = (_digest(tmp_path / k) for k in "abc")
    assert a == b and len(a) > 40
    assert a != c


def test_labels_and_flags(tmp_path: Path) -> None:
    paths = generate(tmp_path, seed=0, config=SMALL)
    assert set(paths) == {"stage1_train", "stage2_train", "eval_image", "eval_text"}
    s1 = read_manifest(paths["stage1_train"])
    assert len(s1) == 2 * (12 * 4 + 4)
    assert {e.lang for e in s1} == {"en", "ko"} and all(e.image_dependent for e in s1)
    for e in s1:
        assert Path(e.image).is_file()
        assert e.answer == answer_word(e.lang, e.question_type, e.labels[e.question_type])
        assert e.answer in answer_choices(e.lang, e.question_type)
    s2 = read_manifest(paths["stage2_train"])
    assert {e.lang for e in s2} == {"ko"} and not any(e.image_dependent for e in s2)
    for e in s2:  # answerable without the image: the cue is in the prompt, or a fixed prior
        if e.labels["source"] == "cue":
            assert e.answer in e.prompt
        else:
            assert e.labels["source"] == "prior"
    assert {e.lang for e in read_manifest(paths["eval_text"])} == {"en", "ko"}


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="stage1_scenes"):
        SynthConfig(stage1_scenes=0)
    with pytest.raises(ValueError, match="question_type"):
        answer_choices("en", "smell")
