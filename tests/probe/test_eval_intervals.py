"""Cluster bootstrap of a share: exact invariances and a null simulation of its coverage."""

from __future__ import annotations

import numpy as np
import pytest

from probe.analysis.stats import BootstrapConfig
from probe.eval.intervals import cluster_share_ci


def test_duplicating_every_example_within_its_unit_changes_nothing() -> None:
    """An image asked in two languages with the same outcome is one unit: the interval equals the one-language one."""
    rng = np.random.default_rng(0)
    hits = (rng.random((2, 30)) < 0.6).astype(float)
    units = [f"img{i}" for i in range(30)]
    once = cluster_share_ci(hits, units)
    twice = cluster_share_ci(np.repeat(hits, 2, axis=1), [u for u in units for _ in range(2)])
    for a, b in zip(once, twice):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_point_is_the_plain_share_and_constant_data_has_a_zero_width_interval() -> None:
    share, lo, hi = cluster_share_ci(np.array([[1, 1, 1, 1], [1, 0, 1, 0]]), ["a", "a", "b", "c"])
    np.testing.assert_allclose(share, [1.0, 0.5], rtol=0, atol=1e-12)
    assert lo[0] == hi[0] == 1.0 and lo[1] < 0.5 < hi[1]


def test_coverage_under_clustered_null() -> None:
    """Units of 2 perfectly correlated examples (p = 0.3): 95% intervals cover p in 0.90..0.99 of 300 simulations.

    Percentile bootstrap with 40 units is slightly liberal; binomial sd of the coverage over 300 runs is 0.013, so
    the band is about +-3.5 sd around 0.945. Treating the 80 examples as units instead covers only ~0.80 here.
    """
    rng = np.random.default_rng(1)
    units = [f"u{i}" for i in range(40) for _ in range(2)]
    covered = 0
    for sim in range(300):
        hits = np.repeat(rng.random(40) < 0.3, 2).astype(float)[None]
        _, lo, hi = cluster_share_ci(hits, units, BootstrapConfig(n_boot=400, seed=sim))
        covered += bool(lo[0] <= 0.3 <= hi[0])
    assert 0.90 <= covered / 300 <= 0.99


def test_bad_config_and_empty_input() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        BootstrapConfig(n_boot=0)
    with pytest.raises(ValueError, match="ci"):
        BootstrapConfig(ci=1.0)
    share, lo, hi = cluster_share_ci(np.zeros((3, 0)), [])
    assert np.isnan(share).all() and share.shape == (3,)
