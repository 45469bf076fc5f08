"""Resuming a capture: no work on captured examples, fixed store sizes, identity by weights, target checked first."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from probe import provenance
from probe.capture import CaptureSpec, capture
from probe.data.manifest import read_manifest
from probe.models import BadExampleError
from probe.store import NotAStoreError, TraceStore

SPEC = CaptureSpec(resid=("pooled",), attn_pattern=False, dtype="float32", batch_size=2)


@pytest.fixture(scope="module")
def examples(colour_manifest):
    return read_manifest(colour_manifest)


class _Counting:
    """Wraps an adapter's build_inputs, recording which example ids the processor saw."""

    def __init__(self, adapter):
        self.adapter, self.seen, self._orig = adapter, [], adapter.build_inputs

    def __enter__(self):
        def counted(exs, *a, **k):
            self.seen += [e.id for e in exs]
            return self._orig(exs, *a, **k)
        self.adapter.build_inputs = counted
        return self

    def __exit__(self, *exc):
        del self.adapter.build_inputs  # back to the class method


def test_resume_feeds_only_the_missing_examples(tiny_llava_adapter, examples, tmp_path):
    path = tmp_path / "s.zarr"
    capture(tiny_llava_adapter, examples[:4], path, SPEC, progress=False)
    with _Counting(tiny_llava_adapter) as seen:
        st = capture(tiny_llava_adapter, examples[:6], path, SPEC, progress=False)
    assert set(seen.seen) == {e.id for e in examples[4:6]}  # checked and captured: never the first four
    whole = capture(tiny_llava_adapter, examples[:6], tmp_path / "w.zarr", SPEC, progress=False)
    xr.testing.assert_allclose(st.dataset.drop_attrs().compute(), whole.dataset.drop_attrs().compute(), atol=1e-6, rtol=0)
    with _Counting(tiny_llava_adapter) as seen:  # nothing left to do: the processor is not called at all
        capture(tiny_llava_adapter, examples[:6], path, SPEC, progress=False)
    assert seen.seen == []


def test_resumed_example_longer_than_the_store_is_one_line(tiny_llava_adapter, examples, tmp_path):
    path = tmp_path / "s.zarr"
    st = capture(tiny_llava_adapter, examples[:2], path, SPEC, progress=False)
    size = st.dataset.sizes["position"]
    long = replace(examples[2], prompt=examples[2].prompt + " and more words" * 8)
    with pytest.raises(BadExampleError, match=rf"example '{long.id}': \d+ tokens, more than the {size} positions") as err:
        capture(tiny_llava_adapter, [*examples[:2], long], path, SPEC, progress=False)
    assert "\n" not in str(err.value)
    st = capture(tiny_llava_adapter, [*examples[:2], long, examples[3]], path, SPEC, skip_bad=True, progress=False)
    assert st.example_ids == [e.id for e in (examples[0], examples[1], examples[3])]
    assert [s["example"] for s in st.skipped] == [long.id]


def test_fixed_example_loses_its_skip_record(tiny_llava_adapter, examples, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    path = tmp_path / "s.zarr"
    bad = replace(examples[0], id="late", image=broken)  # same prompt: fits the store once fixed
    st = capture(tiny_llava_adapter, [examples[0], bad], path, SPEC, skip_bad=True, progress=False)
    assert [s["example"] for s in st.skipped] == ["late"]
    st = capture(tiny_llava_adapter, [examples[0], replace(bad, image=examples[0].image)], path, SPEC, progress=False)
    assert st.example_ids == [examples[0].id, "late"] and st.skipped == []


def test_adding_another_manifest_says_so(tiny_llava_adapter, examples, tmp_path):
    path = tmp_path / "s.zarr"
    capture(tiny_llava_adapter, examples[:2], path, SPEC, progress=False)
    with pytest.warns(UserWarning, match="holds 2 examples that are not among these; adding 1 more"):
        st = capture(tiny_llava_adapter, [replace(examples[0], id="other")], path, SPEC, progress=False)
    assert st.n_examples == 3


def test_non_store_target_is_refused_before_loading_the_model(examples, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError, match="notes.txt exists and is not a TraceStore"):
        capture(str(tmp_path / "no-such-model"), examples[:1], tmp_path / "notes.txt", SPEC, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_by_weights_not_by_path_string(tiny_llava_dir, examples, tmp_path, monkeypatch):
    monkeypatch.setenv("VISBLIND_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "s.zarr"
    capture(str(tiny_llava_dir), examples[:2], path, SPEC, progress=False)
    monkeypatch.chdir(tiny_llava_dir.parent)
    more = [*examples[:2], replace(examples[0], id="more")]
    st = capture(f"./{tiny_llava_dir.name}", more, path, SPEC, progress=False)  # same weights, other name
    assert st.n_examples == 3 and st.attrs["model_id"] == str(tiny_llava_dir)  # provenance keeps the first name


def test_weights_hash_of_an_unchanged_checkpoint_is_cached(tiny_llava_dir, tmp_path, monkeypatch):
    from probe.models import load_model

    monkeypatch.setenv("VISBLIND_CACHE_DIR", str(tmp_path / "cache"))
    model = load_model(tiny_llava_dir).model
    full = provenance.weights_hash(model)
    calls = []
    real = provenance.weights_hash
    monkeypatch.setattr(provenance, "weights_hash", lambda m: calls.append(1) or real(m))
    assert provenance.checkpoint_weights_hash(model, [tiny_llava_dir]) == full
    assert provenance.checkpoint_weights_hash(model, [tiny_llava_dir]) == full
    assert len(calls) == 1  # second call: from the cache, no tensor read
    # the same files loaded in another dtype are another key (their state-dict hash differs)
    half = load_model(tiny_llava_dir, dtype="float16").model
    assert provenance.checkpoint_weights_hash(half, [tiny_llava_dir]) == real(half) != full
    assert len(calls) == 2
    # a rewritten file (new mtime) is hashed again
    weights = next(tiny_llava_dir.glob("*.safetensors"))
    st = weights.stat()
    try:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert provenance.checkpoint_weights_hash(model, [tiny_llava_dir]) == full
        assert len(calls) == 3
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    # no safetensors files (e.g. a hub id): hashed from the tensors every time
    provenance.checkpoint_weights_hash(model, [tmp_path / "nothing-here"])
    assert len(calls) == 4
    np.testing.assert_equal(len(full), 64)


def test_schema_1_store_is_refused_before_loading(tiny_llava_adapter, examples, tmp_path):
    import json

    from probe.store import StoreMismatchError

    path = tmp_path / "s.zarr"
    capture(tiny_llava_adapter, examples[:1], path, SPEC, progress=False)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["visblind_store"] = "1"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreMismatchError, match="store schema version 1"):
        capture(str(tmp_path / "no-such-model"), examples[:2], path, SPEC, progress=False)
    assert TraceStore.open(path).n_examples == 1


def test_store_being_written_by_another_process_is_refused_before_loading(examples, tmp_path):
    import signal
    import subprocess
    import sys

    from probe.store import StoreLockedError

    holder = "\n".join([
        "import sys, time, numpy as np",
        "from probe.store import TraceStoreWriter, VariableSpec",
        "w = TraceStoreWriter(sys.argv[1], variables={'x': VariableSpec(('example',), 'float32', np.nan)})",
        "print('holding', flush=True)",
        "time.sleep(600)",
    ])
    path = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", holder, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(StoreLockedError, match="being written by another process"):
            capture(str(tmp_path / "no-such-model"), examples[:1], path, SPEC, progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
