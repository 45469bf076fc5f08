"""A 50,000-example store is never loaded whole: every view's peak traced memory stays far below the store's size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import synthetic as S

from probe.store import TraceStore

N_LARGE = 50_000


@pytest.fixture(scope="module")
def large_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    # long padded sequences (as a batch with one long prompt leaves them): keys and attention rows dominate the store
    S.write_store(root / "big.zarr", N_LARGE, seed=0, examples_per_chunk=1024, extra_position=200)
    S.write_store(root / "small.zarr", 8, seed=0)  # to import every module a view needs before memory is traced
    return root


def _run(root, monkeypatch, store: str, view: str):
    from streamlit.testing.v1 import AppTest

    from apps.launch import APP_FILE

    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(root))
    at = AppTest.from_file(str(APP_FILE), default_timeout=300)
    at.query_params.update(before=store, view=view)
    return at


def _bytes_in_memory(ds) -> int:
    """Bytes the store's variables would take if loaded whole."""
    return int(sum(v.size * v.dtype.itemsize for v in ds.data_vars.values()))


@pytest.mark.parametrize("view", ["overview", "heads", "example"])
def test_views_stay_lazy_on_50k_examples(large_root, monkeypatch, view):
    ds = TraceStore.open(large_root / "big.zarr").dataset
    assert all(v.chunks is not None for v in ds.data_vars.values())  # dask-backed: nothing read on open
    whole = _bytes_in_memory(ds)
    warm = _run(large_root, monkeypatch, "small.zarr", view)
    warm.run()
    assert not warm.exception, warm.exception
    at = _run(large_root, monkeypatch, "big.zarr", view)
    tracemalloc.start()
    try:
        at.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not at.exception, at.exception
    print(f"{view}: peak traced {peak / 2**20:.0f} MiB, store variables {whole / 2**20:.0f} MiB")
    assert at.dataframe, f"{view} drew no table"
    # a view may hold some example chunks and its statistics (the bootstrap holds n_boot × n weights), never the store
    assert peak < whole / 4, f"{view}: peak {peak / 2**20:.0f} MiB vs store {whole / 2**20:.0f} MiB"
    if view == "heads":
        want = ds["attn_share"].sel(segment="visual", source="last_prompt", layer=0, head=0).values
        summary = at.dataframe[0].value
        for lang in ("en", "ko"):
            m = np.asarray(ds["lang"].values) == lang
            got = summary[summary["lang"] == lang]["mean"].iloc[0]
            np.testing.assert_allclose(got, want[m].mean(), rtol=1e-5)
