"""Cluster bootstrap of a share: resample whole independent units (images), not examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntervalConfig:
    """Percentile cluster bootstrap: `n_boot` resamples of the units, central `ci` interval."""

    n_boot: int = 2000
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ValueError(f"IntervalConfig.n_boot must be >= 1, got {self.n_boot}")
        if not 0.0 < self.ci < 1.0:
            raise ValueError(f"IntervalConfig.ci must be in (0, 1), got {self.ci}")


def cluster_share_ci(
    hits: np.ndarray, units: Sequence[str], config: IntervalConfig = IntervalConfig()
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
