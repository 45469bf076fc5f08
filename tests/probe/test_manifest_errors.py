"""Manifest-level errors name file:line; --skip-bad records bad lines in the store like bad images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from probe.data.manifest import ManifestError, read_manifest, read_manifest_skipping


def _lines(tmp_path, lines: list[bytes]):
    Image.new("RGB", (32, 32), (30, 30, 200)).save(tmp_path / "a.png")
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"id": "a", "image": "a.png", "prompt": "What colour?", "answer": "blue"}).encode()


@pytest.mark.parametrize("line, message", [
    (b'{"id": "b", "image": "a.png", "prompt": "caf\xe9"}', "m.jsonl:2: not UTF-8 (byte 0xe9 at column 45)"),
    (b'{"id": "b", "image": "a.png", "prompt": "p", "labels": ["red"]}', "m.jsonl:2: 'labels' must be a JSON object"),
    (b'{"id": "b", "image": 3, "prompt": "p"}', "m.jsonl:2: 'image' must be a string or null"),
])
def test_bad_line_is_named_with_file_and_line(tmp_path, line, message):
    path = _lines(tmp_path, [GOOD, line])
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(path)


def test_skipping_reader_keeps_good_lines_and_names_bad_ones(tmp_path):
    path = _lines(tmp_path, [GOOD, b"\xff\xfe", b"not json", GOOD])  # line 4 repeats id 'a'
    examples, bad = read_manifest_skipping(path)
    assert [e.id for e in examples] == ["a"]
    assert [where for where, _ in bad] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert [reason.split(" (")[0] for _, reason in bad] == ["not UTF-8", "not valid JSON", "duplicate example id 'a'"]


def test_capture_skip_bad_records_bad_lines(tiny_llava_adapter, tmp_path):
    from probe.capture import CaptureSpec, capture

    path = _lines(tmp_path, [GOOD, b'{"id": "b", "prompt": "p", "labels": ["red"]}'])
    store = capture(tiny_llava_adapter, path, tmp_path / "s.zarr", CaptureSpec(), skip_bad=True, progress=False)
    assert list(store.example_ids) == ["a"]
    assert [s["example"] for s in store.skipped] == [f"{path}:2"]
    assert "'labels' must be a JSON object" in store.skipped[0]["reason"]


def test_skip_record_goes_once_the_example_is_captured(tiny_llava_adapter, tmp_path):
    from probe.capture import CaptureSpec, capture

    Image.new("RGB", (32, 32), (30, 30, 200)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"broken")
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "image": f"{i}.png", "prompt": "What colour?"}) + "\n" for i in "ab"))
    out = tmp_path / "s.zarr"
    first = capture(tiny_llava_adapter, path, out, CaptureSpec(), skip_bad=True, progress=False)
    assert [s["example"] for s in first.skipped] == ["b"]
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "b.png")  # the user fixes the image
    again = capture(tiny_llava_adapter, path, out, CaptureSpec(), skip_bad=True, progress=False)
    assert sorted(again.example_ids) == ["a", "b"]
    assert again.skipped == []
