"""The CLIs' one error layer: each user mistake or fault prints one line naming the path and what to do."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from probe.cli import app
from train.cli import app as train_app


def _run(args: list[str], target=app, **kwargs):
    return CliRunner().invoke(target, args, **kwargs)


def _one_line(result, *needles: str) -> str:
    """The error line; asserts exit code 2, one `error:` line (progress bars aside), no traceback, each needle in it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln.strip() for ln in re.split(r"[\r\n]", result.stderr) if "error" in ln.lower()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def no_transformers_load(monkeypatch):
    """Fail the test if transformers is asked to resolve anything (a bad source must be refused first)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("transformers was asked to load: the source was not checked first")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def _manifest(folder: Path, rows: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    rows = rows or [{"id": "a", "image": "a.png", "prompt": "What colour?", "answer": "red"}]
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("model", ["/nonexistent/model", "./my-model", "runs/x/final"])
def test_missing_model_folder(tmp_path, model, no_transformers_load):
    result = _run(["capture", model, str(_manifest(tmp_path)), "--out", str(tmp_path / "s.zarr")])
    _one_line(result, f"model folder not found: {model}")


def test_hub_id_without_network_fails_before_any_download(tmp_path, monkeypatch, no_transformers_load):
    import probe.models.loading as loading

    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint, timeout=3.0: False)
    result = _run(["capture", "someorg/some-model", str(_manifest(tmp_path)), "--out", str(tmp_path / "s.zarr")])
    _one_line(result, "'someorg/some-model'", "unreachable", "local model folder")


def test_hub_id_offline_mode(tmp_path, monkeypatch, no_transformers_load):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = _run(["eval", "someorg/some-model", str(_manifest(tmp_path))])
    _one_line(result, "'someorg/some-model'", "HF_HUB_OFFLINE")


def test_hub_probe_answers_false_for_an_unresolvable_host():
    from probe.models.loading import _hub_reachable

    assert _hub_reachable("https://no-such-host.invalid", timeout=1.0) is False


def test_folder_with_pickled_weights_only(tmp_path, no_transformers_load):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    result = _run(["capture", str(model), str(_manifest(tmp_path)), "--out", str(tmp_path / "s.zarr")])
    _one_line(result, f"{model}: no safetensors weights (pytorch_model.bin); convert with", "save_pretrained")


def test_full_disk_names_the_store(tmp_path, monkeypatch):
    import probe.capture

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(probe.capture, "capture", full)
    out = tmp_path / "s.zarr"
    result = _run(["capture", "m", str(_manifest(tmp_path)), "--out", str(out)])
    _one_line(result, f"while writing {out}", "stays valid", "rerun the same command to resume")


@pytest.mark.parametrize("command", ["analyze", "compare", "info"])
def test_non_store_path(tmp_path, command):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    stores = [str(tmp_path / "notes")] * (2 if command == "compare" else 1)
    extra = [] if command == "info" else ["--out", str(tmp_path / "r.html")]
    _one_line(_run([command, *stores, *extra]), f"not a TraceStore: {tmp_path / 'notes'}")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    args = ["capture", "./my-model", str(_manifest(tmp_path)), "--out", str(tmp_path / "s.zarr")]
    for result in (_run(["--debug", *args]), _run(args, env={"VISBLIND_DEBUG": "1"})):
        assert isinstance(result.exception, FileNotFoundError)  # raised through, typer prints the traceback
    _one_line(_run(args), "./my-model")  # and the flag does not stick to the next invocation


def test_train_cli_shares_the_layer(tmp_path, no_transformers_load):
    result = _run(["sft", "./my-model", str(_manifest(tmp_path)), "--out", str(tmp_path / "o")], target=train_app)
    _one_line(result, "model folder not found: ./my-model")


def test_unexpected_error_is_named_with_its_type(tmp_path, monkeypatch):
    import probe.capture

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(probe.capture, "capture", bug)
    result = _run(["capture", "m", str(_manifest(tmp_path)), "--out", str(tmp_path / "s.zarr")])
    _one_line(result, "ZeroDivisionError: division by zero", "--debug")


def test_bad_example_named_once(tiny_llava_dir, tmp_path):
    manifest = _manifest(tmp_path, [{"id": "bad", "image": "a.png", "prompt": "<image> two <image>"}])
    result = _run(["capture", str(tiny_llava_dir), str(manifest), "--out", str(tmp_path / "s.zarr")])
    line = _one_line(result, "example 'bad'", "image placeholders")
    assert line.count("example 'bad'") == 1
