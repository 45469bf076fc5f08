"""Cluster bootstrap of a share: resample whole independent units (images), not examples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from probe.analysis.stats import BootstrapConfig

__all__ = ["cluster_share_ci"]


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
