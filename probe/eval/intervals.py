"""Cluster bootstrap of a share: resample whole independent units (images), not examples."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from probe.analysis.stats import BootstrapConfig

__all__ = ["cluster_count_ci", "cluster_share_ci"]


def cluster_share_ci(
    hits: np.ndarray, units: Sequence[str], config: BootstrapConfig = BootstrapConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of hits per row of `hits` [m, n] over n examples, with a percentile interval from resampling units.

    A resample draws len(set(units)) units with replacement and pools all their examples, so the share
    is (hits in drawn units) / (examples in drawn units). Returns (share, low, high), each [m].
    """
    hits = np.atleast_2d(np.asarray(hits, dtype=np.float64))
    if hits.shape[1] != len(units):
        raise ValueError(f"cluster_share_ci: {hits.shape[1]} examples but {len(units)} unit labels")
    if not len(units):
        nan = np.full(hits.shape[0], np.nan)
        return nan, nan.copy(), nan.copy()
    _, code = np.unique(np.asarray(units, dtype=str), return_inverse=True)
    n_units = int(code.max()) + 1
    sums = np.stack([np.bincount(code, weights=row, minlength=n_units) for row in hits])  # [m, G]
    sizes = np.bincount(code, minlength=n_units).astype(np.float64)  # [G]
    rng = np.random.default_rng(config.seed)
    draws = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=config.n_boot).astype(np.float64)
    boots = (draws @ sums.T) / (draws @ sizes)[:, None]  # [B, m]; every unit has >= 1 example, so no 0/0
    alpha = (1.0 - config.ci) / 2.0
    low, high = np.percentile(boots, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return hits.mean(axis=1), low, high


def cluster_count_ci(
    counts: np.ndarray, units: Sequence[str], statistic: Callable[[np.ndarray], np.ndarray],
    config: BootstrapConfig = BootstrapConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic of summed per-example counts with a percentile interval from resampling whole units.

    counts: [n, k] per example (e.g. TP, FP, TN, FN as 0/1); statistic: [..., k] summed counts -> [..., m].
    Units are drawn as in cluster_share_ci (same seed, same multinomial draws). Returns (value, low, high), each [m];
    a resample where the statistic is undefined (NaN, e.g. no predicted positive for precision) is left out.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape[0] != len(units):
        raise ValueError(f"cluster_count_ci: {counts.shape[0]} examples but {len(units)} unit labels")
    value = np.asarray(statistic(counts.sum(0)), dtype=np.float64)
    if not len(units):
        return value, np.full_like(value, np.nan), np.full_like(value, np.nan)
    _, code = np.unique(np.asarray(units, dtype=str), return_inverse=True)
    n_units = int(code.max()) + 1
    per_unit = np.stack([np.bincount(code, weights=col, minlength=n_units) for col in counts.T], axis=1)  # [G, k]
    rng = np.random.default_rng(config.seed)
    draws = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=config.n_boot).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = np.asarray(statistic(draws @ per_unit), dtype=np.float64)  # [B, m]
    alpha = (1.0 - config.ci) / 2.0
    with warnings.catch_warnings():  # a statistic undefined in every resample gives a NaN interval, said by the NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(boots, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return value, low, high
