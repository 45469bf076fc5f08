"""Manifest and Hugging Face dataset input."""

import json

import pytest
from PIL import Image

from probe.data.hf import examples_from_hf
from probe.data.manifest import ManifestError, read_manifest, write_manifest


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")


def test_read_resolves_images_and_keeps_labels(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    _write(tmp_path / "m.jsonl", [
        {"id": "a", "image": "img/a.png", "prompt": "What colour?", "answer": "red", "lang": "en",
         "image_dependent": True, "labels": {"colour": "red"}, "shape": "square"},
        {"id": "b", "image": None, "prompt": "무슨 색?", "lang": "ko"},
    ])
    a, b = read_manifest(tmp_path / "m.jsonl")
    assert a.image == tmp_path / "img" / "a.png"
    assert a.labels == {"colour": "red", "shape": "square"}
    assert a.image_dependent is True and b.image_dependent is None
    assert b.prompt == "무슨 색?" and b.lang == "ko" and b.answer is None


def test_round_trip(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    _write(tmp_path / "m.jsonl", [{"id": "x", "image": "x.png", "prompt": "p", "answer": "a", "labels": {"k": 1}}])
    examples = read_manifest(tmp_path / "m.jsonl")
    write_manifest(examples, tmp_path / "again.jsonl")
    assert read_manifest(tmp_path / "again.jsonl") == examples


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "prompt": "p"}\nnot json\n', "m.jsonl:2: not valid JSON"),
        ('{"id": "a"}\n', "m.jsonl:1: missing string field 'prompt'"),
        ('{"id": "a", "prompt": "p"}\n{"id": "a", "prompt": "q"}\n', "duplicate example id 'a'"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, content, message):
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "m.jsonl")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_hf_dataset_with_column_mapping():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "question": ["What colour?", "몇 개?"],
        "img": [Image.new("RGB", (4, 4), "blue"), Image.new("RGB", (4, 4), "red")],
        "gt": ["blue", "2"],
        "language": ["en", "ko"],
        "colour": ["blue", "red"],
    })
    examples = examples_from_hf(ds, {"prompt": "question", "image": "img", "answer": "gt", "lang": "language"},
                                label_columns=("colour",))
    assert [e.prompt for e in examples] == ["What colour?", "몇 개?"]
    assert [e.lang for e in examples] == ["en", "ko"]
    assert examples[1].labels == {"colour": "red"} and examples[1].id == "1"
    assert examples[0].image.getpixel((0, 0)) == (0, 0, 255)


def test_hf_dataset_missing_column():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"q": ["x"]})
    with pytest.raises(ValueError, match=r"dataset has no column\(s\) \['prompt'\]"):
        examples_from_hf(ds)
