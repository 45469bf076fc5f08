"""Issue 27 items 8-10: over-long prompts, decompression bombs, eval --out refused early, images outside the manifest."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from probe.cli import app
from probe.data.manifest import ManifestError, read_manifest

PROBE = [sys.executable, "-m", "probe.cli"]


def _bomb(path: Path, side: int = 20000) -> None:
    """A greyscale PNG of side x side pixels (over PIL's 2 x MAX_IMAGE_PIXELS) in a few hundred KB."""
    raw = zlib.compress(b"".join(b"\x00" * (side + 1) for _ in range(side)), 9)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def _manifest(folder: Path, rows: list[dict]) -> Path:
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"id": "good", "image": "a.png", "prompt": "What colour?", "answer": "red"}


def _capped(limit_bytes: int = 6 * 2**30):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def test_long_prompt_is_skipped_before_any_forward(tiny_llava_dir, tmp_path):
    """100,000 characters once made capture allocate 10 GB (the T x T mask) and fail; now skipped under a 6 GB cap."""
    path = _manifest(tmp_path, [GOOD, {**GOOD, "id": "long", "prompt": "word " * 20000}])
    out = tmp_path / "s.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*PROBE, "capture", str(tiny_llava_dir), str(path), "--out", str(out), "--skip-bad"],
                         capture_output=True, text=True, env=env, preexec_fn=_capped(), timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    from probe.store import TraceStore

    store = TraceStore.open(out)
    assert store.example_ids == ["good"]
    assert store.skipped[0]["example"] == "long"
    assert "more than the model's 512 positions (max_position_embeddings)" in store.skipped[0]["reason"]
    strict = subprocess.run([*PROBE, "capture", str(tiny_llava_dir), str(path), "--out", str(tmp_path / "t.zarr")],
                            capture_output=True, text=True, env=env, preexec_fn=_capped(), timeout=600, check=False)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "error: example 'long': 1000" in strict.stderr and "tokens, more than the model's 512 positions" in strict.stderr


def test_memory_estimate_refuses_what_cannot_fit(tiny_llava_adapter):
    from probe.data.example import Example
    from probe.models.base import BadExampleError
    from probe.models.limits import check_fits, forward_bytes, max_positions

    cfg = tiny_llava_adapter.text_config
    assert max_positions(tiny_llava_adapter) == cfg.max_position_embeddings
    eager = cfg.num_attention_heads * 4 if cfg._attn_implementation == "eager" else 0
    t = 100
    assert forward_bytes(tiny_llava_adapter, t, rows=2) == 2 * (t * t * (1 + eager) + t * cfg.vocab_size * 4)
    ex = Example("e", Image.new("RGB", (32, 32)), "What colour?", "red")
    inputs = tiny_llava_adapter.build_inputs([ex], padding_side="right")
    check_fits(tiny_llava_adapter, inputs)  # fits in this machine's memory
    with pytest.raises(BadExampleError, match=r"example 'e': \d+ tokens would need at least .* GiB for one forward, "
                                              r"more than the 0.0 GiB free on cpu"):
        check_fits(tiny_llava_adapter, inputs, free=1000)


def test_eval_refuses_long_prompt_before_any_forward(tiny_llava_adapter, monkeypatch):
    from probe.data.example import Example
    from probe.eval import evaluate_dependence
    from probe.models.base import BadExampleError

    def no_forward(*a, **k):
        raise AssertionError("a forward ran")

    exs = [Example(f"e{i}", Image.new("RGB", (32, 32), c), "What colour?" + (" word" * 900 if i else ""), a)
           for i, (c, a) in enumerate([((255, 0, 0), "red"), ((0, 0, 255), "blue")])]
    monkeypatch.setattr(tiny_llava_adapter.model, "forward", no_forward)
    with pytest.raises(BadExampleError, match="example 'e1': .* tokens, more than the model's 512 positions"):
        evaluate_dependence(tiny_llava_adapter, exs, progress=False)


def test_decompression_bomb_is_a_bad_example(tiny_llava_adapter, tmp_path):
    from probe.capture import CaptureSpec, capture

    _bomb(tmp_path / "bomb.png")
    path = _manifest(tmp_path, [GOOD, {**GOOD, "id": "bomb", "image": "bomb.png"}])
    store = capture(tiny_llava_adapter, path, tmp_path / "s.zarr", CaptureSpec(layers=(0,)), skip_bad=True, progress=False)
    assert store.example_ids == ["good"]
    assert "exceeds limit" in store.skipped[0]["reason"] and "decompression-bomb" in store.skipped[0]["reason"]


def test_nothing_to_capture_says_why(tiny_llava_adapter, tmp_path):
    from probe.capture import CaptureSpec, capture

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"no example to capture: manifest .*empty.jsonl holds none$"):
        capture(tiny_llava_adapter, empty, tmp_path / "s.zarr", CaptureSpec(), progress=False)
    bad = _manifest(tmp_path, [{**GOOD, "image": "missing.png"}])
    with pytest.raises(ValueError, match=r"no example could be captured: all 1 were skipped: good: image not found"):
        capture(tiny_llava_adapter, bad, tmp_path / "t.zarr", CaptureSpec(), skip_bad=True, progress=False)


def test_eval_out_into_a_store_being_written_is_refused_before_any_work(colour_manifest, tiny_llava_adapter, tmp_path,
                                                                         monkeypatch):
    """A real second process holds the store (as a capture does); eval must refuse before loading the model."""
    import probe.models
    from probe.capture import CaptureSpec, capture

    out = tmp_path / "s.zarr"
    capture(tiny_llava_adapter, colour_manifest, out, CaptureSpec(layers=(0,)), progress=False)
    hold = ("import sys, time; from probe.store import lock; "
            f"lock.acquire({str(out)!r}, 'capture'); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(probe.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        result = CliRunner().invoke(app, ["eval", "m", str(colour_manifest), "--out", str(out)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, result.output
    assert f"error: store {out} is being written by another process" in result.stderr


def test_eval_out_into_a_users_folder_is_refused(tmp_path, colour_manifest):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, ["eval", "m", str(colour_manifest), "--out", str(folder)])
    assert result.exit_code == 2 and "is neither a TraceStore nor a zarr folder" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["mine.txt"]


def test_eval_group_read_is_one_version_while_another_process_replaces_it(tmp_path):
    """compare reading a store's eval group while `probe eval --out` replaced it: 'cannot reshape array of size 200'."""
    import numpy as np
    import xarray as xr

    from probe.analysis._io import open_eval
    from probe.eval.dependence import save_dependence

    def version(n: int) -> xr.Dataset:
        return xr.Dataset({"correct": ("example", np.arange(n) % 2 == 0)}, coords={"example": [f"e{i}" for i in range(n)]})

    out = tmp_path / "plain.zarr"
    save_dependence(version(524), out)
    ev = open_eval(out)
    code = ("import numpy as np, xarray as xr; from probe.eval.dependence import save_dependence; "
            "save_dependence(xr.Dataset({'correct': ('example', np.ones(200, bool))}, "
            f"coords={{'example': [f'e{{i}}' for i in range(200)]}}), {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert ev.sizes["example"] == 524 and ev["correct"].values.sum() == 262  # the version that was read, whole
    assert open_eval(out).sizes["example"] == 200


@pytest.mark.parametrize("image", ["/etc/passwd", "../outside.png", "link/x.png"])
def test_images_outside_the_manifest_folder_need_the_flag(tmp_path, image):
    inner = tmp_path / "data"
    inner.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    os.symlink(tmp_path, inner / "link")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    path = _manifest(inner, [{**GOOD, "image": image}])
    with pytest.raises(ManifestError, match=rf"m.jsonl:1: image '{image}' lies outside the manifest's folder .*"
                                            "pass --allow-outside-paths"):
        read_manifest(path, allow_outside_paths=False)
    assert read_manifest(path)[0].image is not None  # the Python API's default reads it
    result = CliRunner().invoke(app, ["capture", "m", str(path), "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "lies outside the manifest's folder" in result.stderr


def test_images_inside_the_folder_and_the_synthetic_set_need_no_flag(tmp_path):
    from probe.data.synth import generate

    for manifest in generate(tmp_path / "synth", seed=0).values():
        assert read_manifest(manifest, allow_outside_paths=False)
    path = _manifest(tmp_path, [GOOD, {**GOOD, "id": "b", "image": str(tmp_path / "a.png")}])
    assert len(read_manifest(path, allow_outside_paths=False)) == 2  # absolute, but inside the folder


def test_cli_errors_keep_exit_codes_and_name_bare_keys():
    import typer

    from probe.cli_errors import App, describe

    demo = App()

    @demo.command("x")
    def _x(code: int = 0) -> None:
        raise typer.Exit(code)

    @demo.command("y")
    def _y() -> None:
        pass

    result = CliRunner().invoke(demo, ["x", "--code", "3"])
    assert result.exit_code == 3 and "error" not in result.output
    assert describe(KeyError(99999), {}) == "KeyError: 99999 (an unexpected error: rerun with --debug for the traceback)"
    assert describe(KeyError("store s has no capture_spec attr"), {}) == "store s has no capture_spec attr"
