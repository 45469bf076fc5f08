"""A 5,000-example store is analysed chunk by chunk: never loaded whole (dask chunk count + memory cap)."""

from __future__ import annotations

import tracemalloc

import pytest
from conftest import make_dataset, open_store, write_store

from probe.analysis import BootstrapConfig, KeyspaceConfig
from probe.analysis._io import example_chunks
from probe.analysis.attention import attention_collapse
from probe.analysis.keyspace import keyspace_ood
from probe.analysis.mir import modality_integration_rate
from probe.analysis.sinks import find_sink_dims, sink_summary

N, CHUNK = 5000, 125


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    b = write_store(root / "b.zarr", make_dataset(N), chunk=CHUNK)
    a = write_store(root / "a.zarr", make_dataset(N, after=True), chunk=CHUNK)
    return open_store(b), open_store(a)


def _peak(fn) -> int:
    fn()  # warm-up: lazy imports inside libraries are not store data
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_big_store_is_lazy_and_chunked(big) -> None:
    b, _ = big
    assert len(example_chunks(b)) == N // CHUNK
    assert b["hook_resid_post_tokens"].data.npartitions == N // CHUNK


@pytest.mark.parametrize("name", ["mir", "keyspace", pytest.param("sinks", marks=pytest.mark.slow)])
def test_memory_stays_far_below_store_size(big, name: str) -> None:
    b, a = big
    heavy = {"mir": "hook_resid_post_tokens", "keyspace": "hook_rot_k", "sinks": "attn_pattern"}[name]
    fns = {
        "mir": lambda: modality_integration_rate(b),
        "keyspace": lambda: keyspace_ood(b, KeyspaceConfig(max_tokens=200, cv=3)),
        "sinks": lambda: sink_summary(b, find_sink_dims(b)),
    }
    peak = _peak(fns[name])
    whole = b[heavy].nbytes
    # Loading the variable whole would need >= 1x its size (plus decompression buffers); a
    # fixed few MB of dask/sklearn bookkeeping sits on top of one chunk (~0.5 MB) at a time.
    assert peak < 0.5 * whole, (peak, whole)


def test_collapse_on_big_store(big) -> None:
    c = attention_collapse(*big, BootstrapConfig(n_boot=50))
    assert abs(float(c["layer_rel_change"].sel(layer=2, source="answer")) + 0.4) < 0.01
