"""Bad stores and bad requests in the dashboard: one line saying what and where, no traceback, the store untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic as S

sys.path.insert(0, str(Path(__file__).parents[1] / "probe"))


def _set_attr(store: Path, key: str, value) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"][key] = value
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def bad_root(dash_root):
    """Broken stores beside the good pair, in dash_root (removed afterwards)."""
    made = []

    def copy(name: str) -> Path:
        dst = dash_root / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(dash_root / "after.zarr", dst)
        made.append(dst)
        return dst

    corrupt = copy("corrupt.zarr")
    (corrupt / "attn_share" / "c" / "0" / "0" / "0" / "0" / "0").write_bytes(b"garbage" * 20)
    _set_attr(copy("negative.zarr"), "_visblind_committed", -5)
    _set_attr(copy("newer.zarr"), "visblind_store", "3")
    for name, kw in (("disjoint.zarr", {"id_prefix": "other"}), ("layers4.zarr", {"layers": (0, 1, 2, 3)})):
        S.write_store(dash_root / name, 12, seed=2, eval_group=False, **kw)
        made.append(dash_root / name)
    (dash_root / "data" / "bad.jsonl").write_text("this is not JSON\n")
    yield dash_root
    for p in made:
        shutil.rmtree(p, ignore_errors=True)
    (dash_root / "data" / "bad.jsonl").unlink()


def _one_error(at, *needles: str) -> str:
    assert not at.exception, at.exception
    assert len(at.error) == 1, [e.value for e in at.error]
    text = at.error[0].value
    assert "\n" not in text and "Traceback" not in text, text
    for n in needles:
        assert n in text, text
    return text


@pytest.mark.parametrize("view", ["overview", "heads"])
def test_corrupt_chunk_named(app, bad_root, view):
    at = app(before="before.zarr", after="corrupt.zarr", view=view)
    at.run()
    _one_error(at, "corrupt.zarr", "attn_share/c/0/0/0/0/0", "cannot be read")


@pytest.mark.parametrize("param", ["before", "after"])
def test_nul_and_control_characters_refused(app, bad_root, param):
    for bad in ("before.zarr\x00", "bef\x07ore.zarr"):
        at = app(**({"before": "before.zarr", param: bad}))
        at.run()
        _one_error(at, "refused", "characters")


def test_negative_committed_count(app, bad_root):
    at = app(before="negative.zarr")
    at.run()
    _one_error(at, "negative.zarr", "_visblind_committed", "-5")


def test_newer_schema(app, bad_root):
    at = app(before="newer.zarr")
    at.run()
    _one_error(at, "newer.zarr", "newer than this visblind reads")


def test_no_shared_example(app, bad_root):
    at = app(before="before.zarr", after="disjoint.zarr", view="overview")
    at.run()
    _one_error(at, "share no example id", "before store alone")


def test_heads_refuses_incomparable_layers(app, bad_root):
    at = app(before="before.zarr", after="layers4.zarr", view="heads")
    at.run()
    _one_error(at, "dim 'layer'", "before store alone")
    assert set(at.dataframe[0].value["store"]) == {"before"}  # no after − before drawn


def test_example_view_non_json_manifest(app, bad_root):
    at = app(before="before.zarr", after="after.zarr", view="example")
    at.run()
    at.sidebar.selectbox(key="manifest").select("data/bad.jsonl").run()
    assert not at.exception, at.exception
    assert "not valid JSON" in " ".join(c.value for c in at.caption)


def test_symlinked_entries_inside_a_real_folder_refused(app, dash_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside_inner")
    S.write_store(outside / "secret.zarr", 4, eval_group=False)
    inner = dash_root / "inner.zarr"
    inner.mkdir()
    try:
        for entry in (outside / "secret.zarr").iterdir():
            (inner / entry.name).symlink_to(entry)
        at = app(before="inner.zarr", view="heads")
        at.run()
        _one_error(at, "refused", "outside ROOT")
        from apps.paths import discover

        assert "inner.zarr" not in discover(dash_root)["stores"]
    finally:
        shutil.rmtree(inner)


def test_store_being_written(app, dash_root):
    path = dash_root / "writing.zarr"
    S.write_store(path, 6, seed=3, eval_group=False)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom probe.store.lock import acquire\nacquire(sys.argv[1], 'capture')\nprint('held', flush=True)\n"
        "time.sleep(120)"), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        at = app(before="before.zarr", after="writing.zarr", view="overview")
        at.run()
        assert not at.exception, at.exception
        assert "being written by another process" in " ".join(i.value for i in at.info)
    finally:
        holder.kill()
        holder.wait()
        shutil.rmtree(path)
