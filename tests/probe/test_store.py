"""TraceStore: exact round trips, lazy chunked reads, crash-safe resume, identity and comparability checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr

from probe.capture.spec import CaptureSpec
from probe.store import (
    IncomparableStoresError,
    NotAStoreError,
    StoreMismatchError,
    TraceStore,
    TraceStoreWriter,
    VariableSpec,
    open_store,
)

# A miniature capture: deterministic data per example id, written in batches. The same code runs
# in this process (the uninterrupted reference) and in a child process that gets killed.
CAPTURE = textwrap.dedent(
    '''
    import zlib
    import numpy as np
    from probe.store import TraceStoreWriter, VariableSpec

    IDS = [f"ex{i:02d}" for i in range(11)]
    VARIABLES = {
        "seq_len": VariableSpec(("example",), "int32", -1),
        "attn_share": VariableSpec(("example", "layer", "head", "segment"), "float32", np.nan,
                                   {"tl_site": "blocks.{layer}.attn.hook_pattern"}),
        "hook_resid_post": VariableSpec(("example", "layer", "query", "feature"), "float16", np.nan),
    }
    COORDS = {"layer": [0, 2], "head": [0, 1, 2], "segment": ["text", "visual"], "query": ["last_prompt", "answer_0"]}
    SIZES = {"feature": 5}
    EXAMPLE_COORDS = ["lang", "image_dependent", "label_colour"]
    ATTRS = {"model_id": "tiny", "weights_hash": "abc", "adapter": "llava", "capture_spec": "{}"}

    def example_data(ids):
        rngs = [np.random.default_rng(zlib.crc32(i.encode())) for i in ids]
        return {
            "seq_len": np.array([r.integers(3, 9) for r in rngs], dtype=np.int32),
            "attn_share": np.stack([r.random((2, 3, 2)) for r in rngs]).astype(np.float32),
            "hook_resid_post": np.stack([r.standard_normal((2, 2, 5)) for r in rngs]).astype(np.float16),
        }

    def example_coords(ids):
        return {"lang": ["ko" if int(i[2:]) % 2 else "en" for i in ids],
                "image_dependent": [int(i[2:]) % 3 == 0 for i in ids],
                "label_colour": ["red" if int(i[2:]) % 4 else "" for i in ids]}

    def capture(path, batch=3, slow=0.0):
        w = TraceStoreWriter(path, variables=VARIABLES, coords=COORDS, sizes=SIZES,
                             example_coords=EXAMPLE_COORDS, attrs=ATTRS, examples_per_chunk=4)
        done = w.done_ids()
        todo = [i for i in IDS if i not in done]
        for s in range(0, len(todo), batch):
            b = todo[s:s + batch]
            w.append(b, example_coords(b), example_data(b))
            if slow:
                import time; time.sleep(slow)
        w.record_skipped("broken", "image file is corrupt")
        return w.close()
    '''
)
ns: dict = {}
exec(CAPTURE, ns)  # noqa: S102 - the reference run uses the very code the child runs

# Child: install a kill switch, then run the capture. `hits` counts calls of the patched function.
CHILD = CAPTURE + textwrap.dedent(
    '''
    import os, signal, sys
    import zarr
    from probe.store import writer as W

    mode, at, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    hits = [0]
    def killer(orig):
        def wrapped(*a, **k):
            hits[0] += 1
            if hits[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(*a, **k)
        return wrapped
    if mode == "commit":        # data of an append written, commit record not yet
        W.TraceStoreWriter._commit = killer(W.TraceStoreWriter._commit)
    elif mode == "setitem":     # in the middle of writing one append's arrays
        zarr.Array.__setitem__ = killer(zarr.Array.__setitem__)
    elif mode == "resize":      # some arrays grown, others not
        zarr.Array.resize = killer(zarr.Array.resize)
    elif mode == "create":      # store built in its temporary folder, not yet renamed into place
        W.os.rename = killer(W.os.rename)
    capture(path, slow=0.3 if mode == "async" else 0.0)
    '''
)


def _child(mode: str, at: int, path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(at), str(path)], env=env,
                            stderr=subprocess.PIPE)


def _without_time(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.load()
    ds.attrs.pop("created", None)
    return ds


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> TraceStore:
    """An uninterrupted capture."""
    return ns["capture"](tmp_path_factory.mktemp("ref") / "ref.zarr")


# ---------------------------------------------------------------- round trip and lazy reads


def test_round_trip_equals_numpy_input_per_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 7, 6
    bf16 = torch.randn(n, d, dtype=torch.bfloat16)
    inputs = {
        "f16": rng.standard_normal((n, d)).astype(np.float16),
        "f32": rng.standard_normal((n, d)).astype(np.float32),
        "bf16": bf16.float().numpy(),
        "i8": rng.integers(-1, 7, (n, d)).astype(np.int8),
        "i32": rng.integers(-1, 10**6, (n, d)).astype(np.int32),
        "flag": rng.random((n, d)) > 0.5,
    }
    inputs["f32"][0, :2] = np.nan
    inputs["f16"][3, -1] = np.nan
    variables = {
        "f16": VariableSpec(("example", "feature"), "float16"),
        "f32": VariableSpec(("example", "feature"), "float32"),
        "bf16": VariableSpec(("example", "feature"), "bfloat16"),
        "i8": VariableSpec(("example", "feature"), "int8", -1),
        "i32": VariableSpec(("example", "feature"), "int32", -1),
        "flag": VariableSpec(("example", "feature"), "bool", False),
    }
    w = TraceStoreWriter(tmp_path / "s", variables=variables, sizes={"feature": d}, examples_per_chunk=3)
    for s in (slice(0, 2), slice(2, 7)):
        w.append([f"e{i}" for i in range(n)][s], {}, {k: v[s] for k, v in inputs.items()})
    ds = w.close().dataset
    for name, want in inputs.items():
        got = ds[name].values
        expect_dtype = np.float32 if name == "bf16" else want.dtype
        assert got.dtype == expect_dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)  # exact; NaN == NaN
    assert ds["bf16"].attrs["source_dtype"] == "bfloat16"
    assert torch.equal(torch.from_numpy(ds["bf16"].values).bfloat16(), bf16)  # bf16 values survive exactly
    assert list(ds["example"].values) == [f"e{i}" for i in range(n)]


def test_smaller_trailing_dims_are_padded_with_fill(tmp_path: Path) -> None:
    variables = {"projector_out": VariableSpec(("example", "vtoken", "feature"), "float32"),
                 "query_position": VariableSpec(("example", "query"), "int32", -1)}
    w = TraceStoreWriter(tmp_path / "s", variables=variables, coords={"query": ["last_prompt", "answer_0", "answer_1"]},
                         sizes={"vtoken": 4, "feature": 2})
    w.append(["a"], {}, {"projector_out": np.ones((1, 3, 2)), "query_position": np.array([[5]])})
    ds = w.close().dataset
    np.testing.assert_array_equal(ds["projector_out"].values[0], [[1, 1], [1, 1], [1, 1], [np.nan, np.nan]])
    np.testing.assert_array_equal(ds["query_position"].values, [[5, -1, -1]])


def test_lazy_open_is_dask_backed_and_chunked_along_example(reference: TraceStore) -> None:
    ds = open_store(reference.path).dataset
    assert ds.sizes["example"] == 11
    for name in ("seq_len", "attn_share", "hook_resid_post"):
        assert isinstance(ds[name].data, da.Array), name
        assert ds[name].chunks[0] == (4, 4, 3), name  # examples_per_chunk=4, 11 examples
        assert all(len(c) == 1 for c in ds[name].chunks[1:]), name
    assert ds["attn_share"].dims == ("example", "layer", "head", "segment")
    assert ds["attn_share"].attrs["tl_site"] == "blocks.{layer}.attn.hook_pattern"
    assert list(ds["layer"].values) == [0, 2] and list(ds["segment"].values) == ["text", "visual"]
    assert ds["lang"].dims == ("example",) and ds["image_dependent"].dtype == bool
    want = ns["example_data"](ns["IDS"])
    np.testing.assert_array_equal(ds["hook_resid_post"].values, want["hook_resid_post"])
    # labels are in memory so groupby works
    assert ds["seq_len"].groupby("lang").count().sel(lang="ko").values == 5


def test_huge_variables_get_smaller_chunks(tmp_path: Path) -> None:
    variables = {"hook_rot_k": VariableSpec(("example", "layer", "position", "d_head"), "float32")}
    w = TraceStoreWriter(tmp_path / "s", variables=variables, sizes={"layer": 4, "position": 8, "d_head": 8},
                         examples_per_chunk=64, max_chunk_bytes=512)  # one example = 1 KiB
    w.append(["a", "b"], {}, {"hook_rot_k": np.zeros((2, 4, 8, 8), np.float32)})
    ds = w.close().dataset
    assert ds["hook_rot_k"].chunks[:2] == ((1, 1), (2, 2))  # split along example, then layer


def test_appends_are_committed_in_whole_chunks(tmp_path: Path) -> None:
    variables = {"x": VariableSpec(("example", "feature"), "float32")}
    w = TraceStoreWriter(tmp_path / "s", variables=variables, sizes={"feature": 3}, examples_per_chunk=4)
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    w.append(["a", "b", "c"], {}, {"x": rows[:3]})
    assert w.n_examples == 0 and w.done_ids() == {"a", "b", "c"}  # pending, not yet on disk
    assert TraceStore.open(tmp_path / "s").n_examples == 0
    w.append(["d", "e", "f"], {}, {"x": rows[3:6]})
    assert w.n_examples == 4 and TraceStore.open(tmp_path / "s").n_examples == 4  # one whole chunk
    w.append(["g"], {}, {"x": rows[6:7]})
    assert w.n_examples == 4
    ds = w.close().dataset
    assert ds.sizes["example"] == 7 and ds["x"].chunks[0] == (4, 3)
    np.testing.assert_array_equal(ds["x"].values, rows[:7])
    eager = TraceStoreWriter(tmp_path / "t", variables=variables, sizes={"feature": 3}, max_buffer_bytes=0)
    eager.append(["a"], {}, {"x": rows[:1]})
    assert eager.n_examples == 1  # max_buffer_bytes=0: every append is committed at once


def test_store_attrs_and_summary(reference: TraceStore) -> None:
    st = TraceStore.open(reference.path)
    assert st.attrs["model_id"] == "tiny" and st.attrs["adapter"] == "llava"
    assert st.skipped == [{"example": "broken", "reason": "image file is corrupt"}]
    assert st.example_ids == ns["IDS"]
    text = st.summary()
    for needle in ("11 committed", "1 skipped", "attn_share", "blocks.{layer}.attn.hook_pattern", "model_id: tiny"):
        assert needle in text, needle


# ---------------------------------------------------------------- resume after SIGKILL


@pytest.mark.parametrize(
    ("mode", "at"),
    [
        ("commit", 1),   # first block of 4 examples on disk, nothing committed
        ("commit", 3),   # 8 examples committed; killed before the skipped list / last block commit
        ("setitem", 13),  # mid-way through the second block's writes (4 at creation, then 7 arrays per block)
        ("resize", 13),   # second block: some arrays grown, some not (7 arrays per block)
        ("create", 1),   # empty store built but not renamed into place
    ],
)
def test_killed_capture_resumes_to_identical_store(tmp_path: Path, reference: TraceStore, mode: str, at: int) -> None:
    path = tmp_path / "s.zarr"
    proc = _child(mode, at, path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    if mode == "create":
        assert not path.exists()
    else:
        partial = TraceStore.open(path)  # readable as it is, showing only committed examples
        n = partial.n_examples
        assert n < len(ns["IDS"])
        xr.testing.assert_identical(
            _without_time(partial.dataset).drop_attrs(), _without_time(reference.dataset.isel(example=slice(0, n))).drop_attrs()
        )
    resumed = ns["capture"](path)
    xr.testing.assert_identical(_without_time(resumed.dataset), _without_time(reference.dataset))
    assert not list(path.rglob("*.partial"))


def test_sigkill_at_a_random_moment_then_resume(tmp_path: Path, reference: TraceStore) -> None:
    path = tmp_path / "s.zarr"
    proc = _child("async", 0, path)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until at least one append is committed, then kill during the next
        if TraceStore.exists(path) and TraceStore.open(path).n_examples >= 3:
            break
        time.sleep(0.02)
    time.sleep(float(np.random.default_rng().uniform(0, 0.3)))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    resumed = ns["capture"](path)
    xr.testing.assert_identical(_without_time(resumed.dataset), _without_time(reference.dataset))


def test_rerun_of_a_finished_capture_changes_nothing(tmp_path: Path, reference: TraceStore) -> None:
    path = tmp_path / "s.zarr"
    ns["capture"](path)
    again = ns["capture"](path)  # everything done: no append, skipped recorded once
    xr.testing.assert_identical(_without_time(again.dataset), _without_time(reference.dataset))


def test_append_refuses_examples_already_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    ns["capture"](path)
    w = TraceStoreWriter.resume(path, attrs=ns["ATTRS"])
    assert w.done_ids() == set(ns["IDS"])
    with pytest.raises(ValueError, match="already in the store.*ex00"):
        w.append(["ex00"], ns["example_coords"](["ex00"]), ns["example_data"](["ex00"]))
    with pytest.raises(ValueError, match="shape"):
        w.append(["new"], ns["example_coords"](["ex00"]), {**ns["example_data"](["ex00"]), "seq_len": np.zeros((2,), np.int32)})
    with pytest.raises(ValueError, match=r"missing \['seq_len'\]"):
        w.append(["new"], ns["example_coords"](["ex00"]), {k: v for k, v in ns["example_data"](["ex00"]).items() if k != "seq_len"})
    assert TraceStore.open(path).n_examples == 11


# ---------------------------------------------------------------- identity, non-stores, comparability


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "change",
    [
        {"attrs": {**{"adapter": "other"}}},
        {"coords": {"layer": [0, 1], "head": [0, 1, 2], "segment": ["text", "visual"], "query": ["last_prompt", "answer_0"]}},
        {"sizes": {"feature": 6}},
    ],
)
def test_creating_over_a_different_store_raises_and_touches_nothing(tmp_path: Path, change: dict) -> None:
    path = tmp_path / "s.zarr"
    ns["capture"](path)
    before = _snapshot(path)
    kwargs = dict(variables=ns["VARIABLES"], coords=ns["COORDS"], sizes=ns["SIZES"],
                  example_coords=ns["EXAMPLE_COORDS"], attrs=ns["ATTRS"], examples_per_chunk=4)
    if "attrs" in change:
        kwargs["attrs"] = {**ns["ATTRS"], **change["attrs"]}
    else:
        kwargs.update(change)
    with pytest.raises(StoreMismatchError) as err:
        TraceStoreWriter(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert ("adapter" if "attrs" in change else "layer" if "coords" in change else "sizes.feature") in msg, msg
    with pytest.raises(StoreMismatchError):
        TraceStoreWriter.resume(path, attrs={**ns["ATTRS"], "weights_hash": "zzz"})
    assert _snapshot(path) == before


def test_resume_ignores_creation_time_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    ns["capture"](path)
    # the model's path string is provenance, not identity: the weights hash identifies the weights
    TraceStoreWriter.resume(path, attrs={**ns["ATTRS"], "created": "later", "versions": "{}",
                                         "model_id": "/abs/path/to/tiny"}).close()


def test_not_a_store_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(tmp_path / "plain.zarr", zarr_format=3, consolidated=False)
    for name in ("missing", "empty", "file.txt", "plain.zarr"):
        with pytest.raises(NotAStoreError, match="not a TraceStore") as err:
            TraceStore.open(tmp_path / name)
        assert "\n" not in str(err.value)
        assert not TraceStore.exists(tmp_path / name)
    before = _snapshot(tmp_path / "plain.zarr")
    with pytest.raises(NotAStoreError, match="refusing"):
        TraceStoreWriter(tmp_path / "plain.zarr", variables=ns["VARIABLES"], coords=ns["COORDS"], sizes=ns["SIZES"])
    assert _snapshot(tmp_path / "plain.zarr") == before
    # an empty directory is a fine place for a new store
    TraceStoreWriter(tmp_path / "empty", variables=ns["VARIABLES"], coords=ns["COORDS"], sizes=ns["SIZES"]).close()
    assert TraceStore.open(tmp_path / "empty").n_examples == 0


def _store(path: Path, *, spec: CaptureSpec, coords: dict | None = None, sizes: dict | None = None) -> TraceStore:
    w = TraceStoreWriter(path, variables=ns["VARIABLES"], coords=coords or ns["COORDS"], sizes=sizes or ns["SIZES"],
                         attrs={**ns["ATTRS"], "capture_spec": spec.to_json()})
    return w.close()


def test_comparability(tmp_path: Path) -> None:
    spec = CaptureSpec(layers=(0, 2), max_answer_tokens=1)
    a = _store(tmp_path / "a", spec=spec)
    a.check_comparable(_store(tmp_path / "same", spec=CaptureSpec(layers=(0, 2), max_answer_tokens=1, batch_size=16)))
    cases = {
        "layers": _store(tmp_path / "spec", spec=CaptureSpec(layers=(0, 1), max_answer_tokens=1)),
        "'layer'": _store(tmp_path / "layer", spec=spec, coords={**ns["COORDS"], "layer": [0, 3]}),
        "'head'": _store(tmp_path / "head", spec=spec, coords={**ns["COORDS"], "head": [0, 1]}),
        "'segment'": _store(tmp_path / "seg", spec=spec, coords={**ns["COORDS"], "segment": ["text", "answer"]}),
        "'feature'": _store(tmp_path / "feat", spec=spec, sizes={"feature": 7}),
    }
    for needle, other in cases.items():
        with pytest.raises(IncomparableStoresError) as err:
            a.check_comparable(other)
        msg = str(err.value)
        assert needle in msg and "\n" not in msg, msg
    assert a.capture_spec == json.loads(spec.to_json())


def test_bad_specs_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start with 'example'"):
        VariableSpec(("layer", "example"), "float32")
    with pytest.raises(ValueError, match="dtype"):
        VariableSpec(("example",), "bfloat8")
    with pytest.raises(ValueError, match="integer fill"):
        VariableSpec(("example",), "int32", np.nan)
    with pytest.raises(ValueError, match=r"dims \['feature'\] have neither coords nor sizes"):
        TraceStoreWriter(tmp_path / "s", variables={"x": VariableSpec(("example", "feature"), "float32")})
    assert not (tmp_path / "s").exists()
