"""Cluster bootstrap of a share: resample whole independent units (images), not examples."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from probe.analysis.stats import BootstrapConfig

__all__ = ["cluster_count_ci", "cluster_restored_ci", "cluster_share_ci"]


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
    boots = _cluster_boots(hits, units, config)
    alpha = (1.0 - config.ci) / 2.0
    low, high = np.percentile(boots, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return hits.mean(axis=1), low, high


def _cluster_boots(hits: np.ndarray, units: Sequence[str], config: BootstrapConfig) -> np.ndarray:
    """Resampled shares [B, m] of each row of hits [m, n], drawing whole units (one draw shared by all rows)."""
    _, code = np.unique(np.asarray(units, dtype=str), return_inverse=True)
    n_units = int(code.max()) + 1
    sums = np.stack([np.bincount(code, weights=row, minlength=n_units) for row in hits])  # [m, G]
    sizes = np.bincount(code, minlength=n_units).astype(np.float64)  # [G]
    rng = np.random.default_rng(config.seed)
    draws = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=config.n_boot).astype(np.float64)
    return (draws @ sums.T) / (draws @ sizes)[:, None]  # [B, m]; every unit has >= 1 example, so no 0/0


def cluster_restored_ci(
    before: np.ndarray, after: np.ndarray, edited: np.ndarray, units: Sequence[str],
    config: BootstrapConfig = BootstrapConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of the before -> after fall in a per-example rate that each edit of `after` restores.

    before, after [n] and edited [m, n] are per-example hits (e.g. visually dependent); restored =
    (edited - after) / (before - after) on the pooled shares, with a percentile interval from resampling
    units (one draw for all rows, so the three shares are paired). NaN where before equals after (nothing
    to restore); a resample in which nothing was lost counts as 0 restored.
    """
    edited = np.atleast_2d(np.asarray(edited, dtype=np.float64))
    rows = np.vstack([np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64), edited])
    if rows.shape[1] != len(units) or not len(units):
        raise ValueError(f"cluster_restored_ci: {rows.shape[1]} examples but {len(units)} unit labels")

    def restored(shares: np.ndarray) -> np.ndarray:  # [..., 2 + m] -> [..., m]
        gap = shares[..., :1] - shares[..., 1:2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap != 0, (shares[..., 2:] - shares[..., 1:2]) / np.where(gap != 0, gap, 1.0), np.nan)

    point = restored(rows.mean(axis=1))
    # a resample that lost nothing restores nothing: counted as 0, so a fall carried by one or two images
    # cannot give a confident "restored" (dropping those draws would)
    boots = np.nan_to_num(restored(_cluster_boots(rows, units, config)), nan=0.0)
    alpha = (1.0 - config.ci) / 2.0
    low, high = np.percentile(boots, [100 * alpha, 100 * (1 - alpha)], axis=0)
    nothing = ~np.isfinite(point)
    low[nothing], high[nothing] = np.nan, np.nan
    return point, low, high


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
