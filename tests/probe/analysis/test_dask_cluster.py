"""An analysis of a store larger than a dask worker's memory runs on a `distributed` LocalCluster.

One worker, one thread, a 600 MB memory limit; the store's attn_share is ~670 MB (float32). Oracles:
on a small slice, the cluster result equals the in-memory result exactly (same numpy arithmetic on
the same values); on the whole store, the mean equals a float64 chunk-by-chunk mean (rtol 1e-9).
"""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from probe.analysis import BootstrapConfig  # noqa: E402
from probe.analysis.pipeline import AnalysisConfig, analyze  # noqa: E402
from probe.capture.session import SOURCES  # noqa: E402
from probe.segments import SEGMENT_NAMES  # noqa: E402
from probe.store import TraceStore, TraceStoreWriter, VariableSpec  # noqa: E402

LIMIT = 600e6  # a worker (python + dask + xarray + zarr) starts near 250 MB; 400 MB left it pausing
L, H, BLOCK = 32, 32, 512
PER_EXAMPLE = L * H * len(SOURCES) * len(SEGMENT_NAMES) * 4
N = int(LIMIT * 1.12 / PER_EXAMPLE) // BLOCK * BLOCK + BLOCK
CONFIG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=20))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> TraceStore:
    path = tmp_path_factory.mktemp("dask") / "big.zarr"
    writer = TraceStoreWriter.create(
        path, variables={"attn_share": VariableSpec(("example", "layer", "head", "source", "segment"), "float32", np.nan)},
        coords={"layer": list(range(L)), "head": list(range(H)), "source": list(SOURCES), "segment": list(SEGMENT_NAMES)},
        example_coords={"group": "str"}, examples_per_chunk=64)
    rng = np.random.default_rng(0)
    shape = (BLOCK, L, H, len(SOURCES), len(SEGMENT_NAMES))
    for start in range(0, N, BLOCK):
        data = (rng.integers(0, 64, shape) / 64).astype(np.float32)  # few distinct values: compresses, writes fast
        ids = [f"ex{i:06d}" for i in range(start, start + BLOCK)]
        writer.append(ids, {"group": [f"img{i // 2}" for i in range(start, start + BLOCK)]}, {"attn_share": data})
    return writer.close()


def test_visual_share_on_a_memory_limited_cluster(big):
    ds = big.dataset
    assert ds["attn_share"].nbytes > LIMIT
    small = ds.isel(example=slice(0, 300))
    in_memory = analyze(small.load(), CONFIG)["visual_share"]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=LIMIT, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        whole = analyze(big, CONFIG)["visual_share"]
        on_cluster = analyze(small, CONFIG)["visual_share"]
    for name in ("mean", "low", "high"):
        np.testing.assert_array_equal(on_cluster[name].values, in_memory[name].values)
    want = sum(ds["attn_share"].sel(segment="visual").isel(example=slice(s, s + BLOCK)).values.astype(np.float64).sum(0)
               for s in range(0, N, BLOCK)) / N
    np.testing.assert_allclose(whole["mean"].transpose("layer", "head", "source").values, want, rtol=1e-9, atol=0)
    assert np.all(whole["low"].values <= whole["mean"].values) and np.all(whole["mean"].values <= whole["high"].values)


def test_store_reader_does_not_import_torch():
    """Dask workers unpickle the store's reader; importing torch there would cost each ~300 MB of its limit."""
    import subprocess
    import sys

    code = "import sys, probe.store, probe.analysis.stats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
