"""CKA against float64 references of Kornblith et al. 2019 / Song et al. 2012 / Nguyen et al. 2021."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.stats import ortho_group

from probe.analysis.cka import (
    CKAMemoryError,
    cka_matrix,
    StreamingLinearCKA,
    hsic_unbiased,
    linear_cka,
    linear_kernel,
    minibatch_cka,
    pooled_cka,
    rbf_cka,
    streaming_linear_cka,
)


def _hsic1_loops(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012 eq. (5), written out term by term."""
    n = len(k)
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return float((np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3)))


def _cka_feature_space(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 eq. for linear CKA on centered features."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.fixture
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7))
    return x, x @ rng.normal(size=(7, 5)) + 0.5 * rng.normal(size=(60, 5))


def test_against_float64_references(xy) -> None:
    x, y = xy
    np.testing.assert_allclose(linear_cka(x, y), _cka_feature_space(x, y), atol=1e-6, rtol=0)
    k, l = linear_kernel(x), linear_kernel(y)
    np.testing.assert_allclose(hsic_unbiased(k, l), _hsic1_loops(k, l), atol=1e-6, rtol=1e-9)
    ref = _hsic1_loops(k, l) / np.sqrt(_hsic1_loops(k, k) * _hsic1_loops(l, l))
    np.testing.assert_allclose(linear_cka(x, y, unbiased=True), ref, atol=1e-6, rtol=0)


def test_rotation_and_isotropic_scale_give_one(xy) -> None:
    x, _ = xy
    q = ortho_group.rvs(7, random_state=1)
    z = 3.7 * x @ q + 2.0  # rotation, isotropic scale, shift
    for unbiased in (False, True):
        np.testing.assert_allclose(linear_cka(x, z, unbiased), 1.0, atol=1e-6)
        np.testing.assert_allclose(rbf_cka(x, z, unbiased=unbiased), 1.0, atol=1e-6)


def test_independent_data_unbiased_near_zero() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 50)), rng.normal(size=(400, 50))
    assert abs(linear_cka(x, y, unbiased=True)) < 0.02
    assert linear_cka(x, y, unbiased=False) > 0.08  # the biased estimator is pulled up by d/n


def test_minibatch_single_batch_equals_full(xy) -> None:
    x, y = xy
    np.testing.assert_allclose(minibatch_cka([(x, y)]), linear_cka(x, y, unbiased=True), atol=1e-10)
    halves = [(x[:30], y[:30]), (x[30:], y[30:])]
    k = [hsic_unbiased(linear_kernel(a), linear_kernel(b)) for a, b in halves]
    kk = [hsic_unbiased(linear_kernel(a), linear_kernel(a)) for a, _ in halves]
    ll = [hsic_unbiased(linear_kernel(b), linear_kernel(b)) for _, b in halves]
    np.testing.assert_allclose(minibatch_cka(halves), np.mean(k) / np.sqrt(np.mean(kk) * np.mean(ll)), atol=1e-12)
    assert 0 < minibatch_cka(halves, kernel="rbf") <= 1.0 + 1e-9


@pytest.mark.parametrize("unbiased", [False, True])
def test_streaming_equals_full(xy, unbiased: bool) -> None:
    x, y = xy
    x = x + 5.0  # far from centered: the two-pass centering must be exact
    batches = lambda: ((x[i : i + 13], y[i : i + 13]) for i in range(0, len(x), 13))  # noqa: E731
    np.testing.assert_allclose(streaming_linear_cka(batches, unbiased), linear_cka(x, y, unbiased), atol=1e-6, rtol=0)


def _stream_big(n: int, d: int, batch: int = 2000) -> tuple[float, int]:
    """Streaming unbiased CKA of Y = X R + noise (rows generated per batch); returns (cka, peak bytes)."""
    rot = np.random.default_rng(1).normal(size=(d, d)) / np.sqrt(d)

    def batches():
        rng = np.random.default_rng(0)
        for _ in range(0, n, batch):
            x = rng.normal(size=(batch, d)).astype(np.float32)
            yield x, x @ rot + 0.1 * rng.normal(size=(batch, d)).astype(np.float32)

    tracemalloc.start()
    val = streaming_linear_cka(batches, unbiased=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return val, peak


def test_big_n_without_n_by_n_matrix() -> None:
    n, d = 20_000, 128
    val, peak = _stream_big(n, d)
    assert 0.5 < val <= 1.0
    assert peak < 0.01 * n * n * 8  # an n × n float64 matrix would need 3.2 GB


@pytest.mark.slow
def test_full_size_50000_by_4096() -> None:
    n, d = 50_000, 4096
    val, peak = _stream_big(n, d, batch=1000)
    assert 0.5 < val <= 1.0
    assert peak < 2e9  # d × d accumulators (~0.5 GB), never n × n (20 GB)


def test_streaming_accumulator_checks_passes() -> None:
    acc = StreamingLinearCKA(2, 2)
    acc.update_mean(np.ones((5, 2)), np.ones((5, 2)))
    with pytest.raises(RuntimeError, match="second pass"):
        acc.result()


def test_pooled_cka_between_token_variables(lazy_pair) -> None:
    b = lazy_pair[0]
    rot = ortho_group.rvs(16, random_state=0)
    ds = b.assign(vision_out=(("example", "vpatch", "feature_vision"), (2.0 * b["projector_out"].values @ rot)))
    np.testing.assert_allclose(pooled_cka(ds), 1.0, atol=1e-6)  # pooling commutes with a linear map
    pooled = b["projector_out"].mean("vtoken").values
    other = ds.assign(vision_out=ds["vision_out"] ** 2)
    ref = linear_cka(pooled, (other["vision_out"].mean("vpatch")).values)
    np.testing.assert_allclose(pooled_cka(other), ref, atol=1e-6)


def test_cka_matrix_against_in_memory_reference(lazy_pair) -> None:
    b, a = lazy_pair
    m = cka_matrix(b, a, site="last_prompt", unbiased=True)
    xb = b["hook_resid_post"].sel(query="last_prompt").values.astype(np.float64)
    xa = a["hook_resid_post"].sel(query="last_prompt").values.astype(np.float64)
    ref = np.array([[linear_cka(xb[:, i], xa[:, j], unbiased=True) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(m.values, ref, atol=1e-6)
    within = cka_matrix(b, layers_a=[1, 2])
    np.testing.assert_allclose(np.diag(within.sel(layer_b=[1, 2]).values), 1.0, atol=1e-6)
    with pytest.raises(CKAMemoryError, match="layers_a"):
        cka_matrix(b, max_bytes=1e3)
