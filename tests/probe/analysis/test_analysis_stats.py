"""Bootstrap and MMD against hand-computable cases and float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from probe.analysis.stats import BootstrapConfig, bootstrap_mean_ci, bootstrap_relative_change, rbf_mmd2


def test_constant_change_gives_exact_ci() -> None:
    before, after = np.ones((30, 2)), np.full((30, 2), 0.69)
    for paired in (True, False):
        r = bootstrap_relative_change(before, after, paired, BootstrapConfig(n_boot=200))
        np.testing.assert_allclose(r["rel_change"], [-0.31, -0.31], atol=1e-12)
        np.testing.assert_allclose(r["rel_low"], [-0.31, -0.31], atol=1e-12)
        np.testing.assert_allclose(r["rel_high"], [-0.31, -0.31], atol=1e-12)


def test_paired_ci_is_narrower_when_examples_vary_together() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, (200, 1))
    y = 0.8 * x + rng.normal(0, 1e-3, x.shape)
    cfg = BootstrapConfig(n_boot=500, seed=1)
    p = bootstrap_relative_change(x, y, True, cfg)
    u = bootstrap_relative_change(x, y, False, cfg)
    np.testing.assert_allclose(p["rel_change"], y.mean() / x.mean() - 1, rtol=1e-12)
    assert p["rel_low"][0] <= p["rel_change"][0] <= p["rel_high"][0]
    assert (p["rel_high"] - p["rel_low"])[0] * 10 < (u["rel_high"] - u["rel_low"])[0]


def test_bootstrap_is_deterministic_and_ignores_nan() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(1, 0.1, (50, 3)), rng.normal(2, 0.1, (50, 3))
    x[0, 0] = np.nan
    a = bootstrap_relative_change(x, y, True, BootstrapConfig(n_boot=100, seed=3))
    b = bootstrap_relative_change(x, y, True, BootstrapConfig(n_boot=100, seed=3))
    np.testing.assert_array_equal(a["rel_low"], b["rel_low"])
    np.testing.assert_allclose(a["before"][0], np.mean(x[1:, 0]), rtol=1e-12)
    assert np.isfinite(a["rel_low"]).all()


def test_mean_ci_matches_normal_theory() -> None:
    x = np.random.default_rng(0).normal(0, 1, (400, 1))
    m, lo, hi = bootstrap_mean_ci(x, BootstrapConfig(n_boot=2000))
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    np.testing.assert_allclose((hi - lo)[0] / 2, half, rtol=0.15)
    np.testing.assert_allclose(m[0], x.mean(), rtol=1e-12)


def test_bad_config_and_shapes_raise() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        BootstrapConfig(n_boot=0)
    with pytest.raises(ValueError, match="ci"):
        BootstrapConfig(ci=1.0)
    with pytest.raises(ValueError, match="paired"):
        bootstrap_relative_change(np.ones((3, 1)), np.ones((4, 1)), True)


def _mmd_reference(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))  # noqa: E731
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_mmd_matches_reference_and_detects_shift() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (15, 3)), rng.normal(1, 1, (12, 3))
    np.testing.assert_allclose(rbf_mmd2(x, y, bandwidth=1.3), _mmd_reference(x, y, 1.3), rtol=1e-10)
    same = [rbf_mmd2(rng.normal(0, 1, (60, 3)), rng.normal(0, 1, (60, 3))) for _ in range(20)]
    shifted = rbf_mmd2(rng.normal(0, 1, (60, 3)), rng.normal(2, 1, (60, 3)))
    assert abs(np.mean(same)) < 0.01 < shifted
