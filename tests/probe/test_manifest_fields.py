"""Manifest fields are read as written or refused in one line naming file:line (issue 27 item 5; docs/manifest.md)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from probe.data.manifest import ManifestError, read_manifest

BASE = {"id": "a", "image": "a.png", "prompt": "What colour?", "answer": "red"}


def _manifest(tmp_path, **fields):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "a.png")
    row = {k: v for k, v in {**BASE, **fields}.items() if v is not ...}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "z", "prompt": "p"}) + "\n" + json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize("fields, message", [
    ({"image_dependent": "false"}, "m.jsonl:2: 'image_dependent' must be true, false or null, got the string 'false'"),
    ({"image_dependent": 0}, "m.jsonl:2: 'image_dependent' must be true, false or null, got a number"),
    ({"id": None}, "m.jsonl:2: 'id' must be a non-empty string or an integer, got null"),
    ({"id": ["a", "b"]}, "m.jsonl:2: 'id' must be a non-empty string or an integer, got a list"),
    ({"id": True}, "m.jsonl:2: 'id' must be a non-empty string or an integer, got a boolean"),
    ({"lang": None}, "m.jsonl:2: 'lang' must be a non-empty string, got null (leave the field out for the default 'en')"),
    ({"question_type": None}, "m.jsonl:2: 'question_type' must be a non-empty string, got null"),
    ({"condition": 3}, "m.jsonl:2: 'condition' must be a non-empty string, got a number"),
    ({"group": ["x"]}, "m.jsonl:2: 'group' must be a non-empty string or an integer, got a list"),
    ({"answer": ""}, "m.jsonl:2: 'answer' is empty; leave it out (or null)"),
    ({"answer": "  "}, "m.jsonl:2: 'answer' is empty"),
    ({"labels": {"choices": "red,green"}}, "m.jsonl:2: 'choices' must be a list of non-empty strings, got the string 'red,green'"),
    ({"choices": ["red", ""]}, "m.jsonl:2: 'choices' must be a list of non-empty strings, got a list with an empty"),
])
def test_coercions_are_refused_naming_file_and_line(tmp_path, fields, message):
    with pytest.raises(ManifestError) as err:
        read_manifest(_manifest(tmp_path, **fields))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_values_are_kept_as_written(tmp_path):
    (ex,) = read_manifest(_manifest(tmp_path, id=7, group=3, image_dependent=False,
                                    labels={"choices": ["red", "green"]}))[1:]
    assert (ex.id, ex.group, ex.image_dependent, ex.labels["choices"]) == ("7", "3", False, ["red", "green"])
    (ex,) = read_manifest(_manifest(tmp_path, group=None, answer=None))[1:]
    assert ex.group is None and ex.answer is None


@pytest.mark.parametrize("flag, needs", [(True, True), (False, False), (None, True), (..., True)])
def test_missing_image_dependent_is_image_dependent_everywhere(tmp_path, tiny_llava_adapter, flag, needs):
    """docs/eval.md: a missing flag counts as image-dependent; the store's coordinate says the same (it said False)."""
    from probe.capture import CaptureSpec, capture

    path = _manifest(tmp_path, image_dependent=flag)
    (_, ex) = read_manifest(path)
    assert ex.image_dependent is (None if flag is ... else flag) and ex.needs_image is needs
    store = capture(tiny_llava_adapter, [ex], tmp_path / "s.zarr", CaptureSpec(layers=(0,)), progress=False)
    assert store.dataset["image_dependent"].values.tolist() == [needs]


def test_hf_dataset_string_flag_is_refused():
    datasets = pytest.importorskip("datasets")
    from probe.data.hf import examples_from_hf

    ds = datasets.Dataset.from_dict({"prompt": ["p"], "image_dependent": ["false"]})
    with pytest.raises(ValueError, match="dataset row 0: column 'image_dependent' must hold booleans, got 'false'"):
        examples_from_hf(ds)


def test_empty_answer_is_never_a_ranked_candidate():
    from probe.data.example import Example
    from probe.eval.candidates import plan_candidates

    exs = [Example("a", None, "p", "red"), Example("b", None, "p", "green"), Example("c", None, "p", "?!")]
    with pytest.raises(ValueError, match=r"example 'c': answer '\?!' is empty after normalisation"):
        plan_candidates(exs)
    labelled = [Example("a", None, "p", "red", labels={"choices": ["red", "..."]})]
    with pytest.raises(ValueError, match="candidate '...' is empty after normalisation"):
        plan_candidates(labelled)
