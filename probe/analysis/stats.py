"""Bootstrap confidence intervals over examples and small kernel statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist, pdist


@dataclass(frozen=True)
class BootstrapConfig:
    """Percentile bootstrap over examples."""

    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {self.n_boot}")
        if not 0.0 < self.ci < 1.0:
            raise ValueError(f"ci must be in (0, 1), got {self.ci}")


def _resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] counts of each example in each bootstrap resample."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _weighted_nanmean(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Means of x's columns [n, m] under each row of weights w [b, n], ignoring NaN."""
    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ np.where(ok, x, 0.0)) / (w @ ok.astype(np.float64))


def bootstrap_relative_change(
    before: np.ndarray, after: np.ndarray, paired: bool, config: BootstrapConfig = BootstrapConfig()
) -> dict[str, np.ndarray]:
    """Mean before/after per column, relative change (after-before)/before and its percentile CI.

    before: [n_before, m], after: [n_after, m]; rows are examples (NaN ignored). Paired
    resamples the same example rows in both (requires n_before == n_after, rows aligned);
    unpaired resamples each independently. Returns arrays of shape [m].
    """
    before = np.asarray(before, dtype=np.float64).reshape(len(before), -1)
    after = np.asarray(after, dtype=np.float64).reshape(len(after), -1)
    if before.shape[1] != after.shape[1]:
        raise ValueError(f"before has {before.shape[1]} columns, after {after.shape[1]}")
    if paired and before.shape[0] != after.shape[0]:
        raise ValueError(f"paired bootstrap needs equal example counts, got {before.shape[0]} vs {after.shape[0]}")
    rng = np.random.default_rng(config.seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        mb, ma = np.nanmean(before, axis=0), np.nanmean(after, axis=0)
        rel = (ma - mb) / mb
        wb = _resample_weights(len(before), config.n_boot, rng)
        wa = wb if paired else _resample_weights(len(after), config.n_boot, rng)
        bb, ba = _weighted_nanmean(wb, before), _weighted_nanmean(wa, after)
        brel = (ba - bb) / bb
        diff = ba - bb
    alpha = (1.0 - config.ci) / 2.0
    q = [100 * alpha, 100 * (1 - alpha)]
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rel_lo, rel_hi = np.nanpercentile(brel, q, axis=0)
            d_lo, d_hi = np.nanpercentile(diff, q, axis=0)
    return {
        "before": mb, "after": ma, "rel_change": rel, "rel_low": rel_lo, "rel_high": rel_hi,
        "diff": ma - mb, "diff_low": d_lo, "diff_high": d_hi,
    }


def bootstrap_mean_ci(x: np.ndarray, config: BootstrapConfig = BootstrapConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows of x [n, m] with its percentile bootstrap CI (NaN ignored)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    rng = np.random.default_rng(config.seed)
    boots = _weighted_nanmean(_resample_weights(len(x), config.n_boot, rng), x)
    alpha = (1.0 - config.ci) / 2.0
    lo, hi = np.nanpercentile(boots, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return np.nanmean(x, axis=0), lo, hi


def bootstrap_scalar_ci(x: np.ndarray, config: BootstrapConfig = BootstrapConfig()) -> tuple[float, float, float]:
    """Mean of a 1-D sample (NaN dropped) with its percentile bootstrap CI: (mean, low, high)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if not len(x):
        return (float("nan"),) * 3
    m, lo, hi = bootstrap_mean_ci(x[:, None], config)
    return float(m[0]), float(lo[0]), float(hi[0])


def median_bandwidth(x: np.ndarray, y: np.ndarray | None = None, max_points: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the pooled sample (the median heuristic)."""
    z = x if y is None else np.concatenate([x, y])
    if len(z) > max_points:
        z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
    d = pdist(np.asarray(z, dtype=np.float64))
    med = float(np.median(d[d > 0])) if np.any(d > 0) else 1.0
    return med


def rbf_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD² with k(a,b)=exp(-|a-b|²/(2σ²)), σ by the median heuristic (Gretton et al. 2012, eq. 3)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    sigma = median_bandwidth(x, y) if bandwidth is None else bandwidth
    g = 1.0 / (2.0 * sigma**2)
    kxx = np.exp(-g * cdist(x, x, "sqeuclidean"))
    kyy = np.exp(-g * cdist(y, y, "sqeuclidean"))
    kxy = np.exp(-g * cdist(x, y, "sqeuclidean"))
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )
