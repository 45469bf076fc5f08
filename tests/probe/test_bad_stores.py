"""Damaged, hand-edited and mismatched stores: `probe info`, `probe compare` and a resumed capture refuse them in one line
naming the file or attribute, and never change a store that fails validation."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe.cli import app
from probe.store import StoreError, TraceStore, TraceStoreWriter

sys.path.insert(0, str(Path(__file__).parents[1] / "apps"))
import synthetic as S  # noqa: E402

COMMITTED = "_visblind_committed"


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line(result, *needles: str) -> str:
    """The error line: exit code 2, exactly one `error:` line, no traceback, each needle in it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln.strip() for ln in re.split(r"[\r\n]", result.stderr) if ln.strip().startswith("error")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _digest(folder: Path) -> str:
    """Every file's relative path and bytes: equal digests = the store is untouched."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _set_attr(store: Path, key: str, value) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"][key] = value
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_stores")
    S.write_store(root / "a.zarr", 8, seed=0)
    S.write_store(root / "b.zarr", 8, seed=1, visual_scale=0.3)
    return root


def _copy(pair: Path, name: str, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(pair / name, tmp_path / name))


def test_corrupt_chunk_is_named_by_info_check_and_compare(pair, tmp_path):
    bad = _copy(pair, "b.zarr", tmp_path)
    chunk = bad / "attn_share" / "c" / "0" / "0" / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"garbage, not zstd" * 10)
    before = _digest(bad)
    assert _run("info", str(bad)).exit_code == 0  # the summary reads no chunk
    _one_line(_run("info", str(bad), "--check"), "attn_share/c/0/0/0/0/0", "'ex0' to 'ex7'", "cannot be read")
    line = _one_line(_run("compare", str(pair / "a.zarr"), str(bad), "--out", str(tmp_path / "r.html")),
                     "attn_share/c/0/0/0/0/0", str(bad))
    assert "RuntimeError" not in line and "unexpected" not in line
    assert "every chunk file reads" in _run("info", str(pair / "a.zarr"), "--check").output
    assert _digest(bad) == before


@pytest.mark.parametrize("value, needle", [(-5, "is -5, not a count"), (10**12, "says 1000000000000 examples"),
                                           (9, "says 9 examples are committed but array 'example' holds 8"),
                                           ("4", "is '4', not a count"), (True, "is True")])
def test_inconsistent_committed_count_refused_in_one_line(pair, tmp_path, value, needle):
    bad = _copy(pair, "b.zarr", tmp_path)
    _set_attr(bad, COMMITTED, value)
    before = _digest(bad)
    _one_line(_run("info", str(bad)), COMMITTED, needle)
    _one_line(_run("compare", str(pair / "a.zarr"), str(bad), "--out", str(tmp_path / "r.html")), COMMITTED, needle)
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(StoreError, match=COMMITTED):
        TraceStoreWriter.resume(bad)
    assert _digest(bad) == before  # refused before anything was resized or written


def test_newer_schema_and_broken_layout_refused(pair, tmp_path):
    newer = _copy(pair, "b.zarr", tmp_path)
    _set_attr(newer, "visblind_store", "3")
    _one_line(_run("info", str(newer)), "store schema version '3', newer than this visblind reads", "upgrade")
    _one_line(_run("compare", str(pair / "a.zarr"), str(newer), "--out", str(tmp_path / "r.html")), "'3'")
    broken = _copy(pair, "a.zarr", tmp_path)
    _set_attr(broken, "_visblind_layout", "{not json")
    _one_line(_run("info", str(broken)), "'_visblind_layout' is not a valid layout")


def test_real_resume_refuses_phantom_rows(tiny_llava_adapter, colour_manifest, tmp_path):
    """A capture resumed into a store whose committed count was raised past its rows (6 for 4) is refused, unchanged
    (it used to append after 2 phantom rows with id "")."""
    from probe.capture import CaptureSpec, capture
    from probe.data.manifest import read_manifest

    examples = read_manifest(colour_manifest)
    out = tmp_path / "s.zarr"
    spec = CaptureSpec(batch_size=2)
    capture(tiny_llava_adapter, examples[:4], out, spec, progress=False, examples_per_chunk=2)
    _set_attr(out, COMMITTED, 6)
    before = _digest(out)
    with pytest.raises(StoreError, match=r"says 6 examples are committed but array 'example' holds 4 rows"):
        capture(tiny_llava_adapter, examples[:8], out, spec, progress=False, examples_per_chunk=2)
    assert _digest(out) == before
    _set_attr(out, COMMITTED, 10**12)
    before = _digest(out)
    with pytest.raises(StoreError, match="1000000000000"):
        capture(tiny_llava_adapter, examples[:8], out, spec, progress=False, examples_per_chunk=2)
    assert _digest(out) == before  # no array was resized to 10^12 rows


def test_compare_checks_example_sets_before_any_work(pair, tmp_path, monkeypatch):
    S.write_store(tmp_path / "x30.zarr", 30, seed=0, eval_group=False)
    S.write_store(tmp_path / "x10.zarr", 10, seed=1, eval_group=False)
    S.write_store(tmp_path / "other.zarr", 10, seed=1, eval_group=False, id_prefix="other")
    import probe.analysis.registry as registry

    monkeypatch.setattr(registry, "ANALYSES", ())  # any analysis run would be a failure of "before any work"
    out = tmp_path / "r.html"
    _one_line(_run("compare", str(tmp_path / "x30.zarr"), str(tmp_path / "x10.zarr"), "--out", str(out)),
              "(30 examples)", "(10 examples)", "10 shared, 20 only in the first, 0 only in the second", "--intersect")
    for extra in ([], ["--intersect"]):
        _one_line(_run("compare", str(tmp_path / "x30.zarr"), str(tmp_path / "other.zarr"), "--out", str(out), *extra),
                  "share no example id")
    assert not out.exists()


def test_compare_intersect_says_what_it_left_out(tmp_path):
    S.write_store(tmp_path / "x30.zarr", 30, seed=0, eval_group=False)
    S.write_store(tmp_path / "x10.zarr", 10, seed=1, eval_group=False)
    out = tmp_path / "r.html"
    res = _run("compare", str(tmp_path / "x30.zarr"), str(tmp_path / "x10.zarr"), "--out", str(out), "--intersect")
    assert res.exit_code == 0, res.output
    assert "examples: 10 shared (30 before, 10 after)" in json.loads(out.with_suffix(".json").read_text())["intersection"]


def test_out_json_refused_before_overwriting(pair, tmp_path):
    out = tmp_path / "r.json"
    for cmd in (["compare", str(pair / "a.zarr"), str(pair / "b.zarr")], ["analyze", str(pair / "a.zarr")]):
        _one_line(_run(*cmd, "--out", str(out)), "--out", "r.html")
        assert not out.exists()


def _append_copies(path: Path, k: int) -> None:
    """Append k more examples (copies of the first k under new ids): what a capture still running adds."""
    st = TraceStore.open(path)
    rows = st.dataset.isel(example=slice(0, k)).load()
    w = TraceStoreWriter.resume(path)
    w.append([f"late{i}" for i in range(k)], {c: rows[c].values.tolist() for c in st.layout.example_coords},
             {v: rows[v].values for v in st.layout.variables})
    w.close()


def test_saved_verdict_fingerprints_what_the_comparison_read(pair, tmp_path, monkeypatch):
    """A capture that adds examples to AFTER while `probe compare --save` runs: the save records the examples the
    comparison read, so the dashboard's reader refuses it as stale instead of showing it as over all examples."""
    import probe.report.html as html
    from probe.analysis.saved import SavedResultsError
    from probe.report.verdict import saved_verdict

    a, b = pair / "a.zarr", _copy(pair, "b.zarr", tmp_path)
    real = html.compare_stores

    def compare_then_capture_finishes(*args, **kwargs):
        res = real(*args, **kwargs)
        _append_copies(b, 4)
        return res

    monkeypatch.setattr(html, "compare_stores", compare_then_capture_finishes)
    res = _run("compare", str(a), str(b), "--out", str(tmp_path / "r.html"), "--intersect", "--save")
    assert res.exit_code == 0, res.output
    assert TraceStore.open(b).n_examples == 12
    with pytest.raises(SavedResultsError, match="examples: 8 != 12"):
        saved_verdict(a, b)


def test_compare_save_refuses_a_store_being_written(pair, tmp_path):
    b = _copy(pair, "b.zarr", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom probe.store.lock import acquire\nacquire(sys.argv[1], 'capture')\nprint('held', flush=True)\n"
        "time.sleep(120)"), str(b)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        _one_line(_run("compare", str(pair / "a.zarr"), str(b), "--out", str(tmp_path / "r.html"), "--save"),
                  "is being written by another process")
        assert time.monotonic() - start < 30
        assert not (tmp_path / "r.html").exists() and "compare/index" not in TraceStore.open(b).groups()
    finally:
        holder.kill()
        holder.wait()
