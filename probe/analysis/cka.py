"""Centered kernel alignment: linear and RBF, biased and unbiased, full, minibatch and streaming forms.

Kornblith et al., ICML 2019 (CKA = HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L)), biased HSIC
tr(KHLH)); Song et al., JMLR 2012, Thm. 2 (unbiased HSIC_1); Nguyen, Raghu & Kornblith,
ICLR 2021, eq. 3 (minibatch CKA: unbiased HSIC averaged over minibatches). The streaming
linear form uses the feature-space identities tr(K̃L̃) = ||XᵀY||²_F - Σ|x_i|²|y_i|² etc., so
it never forms an n × n matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import xarray as xr
from scipy.spatial.distance import cdist

from probe.analysis._io import as_dataset, example_chunks
from probe.vocab import to_str

_EPS = 1e-300


def linear_kernel(x: np.ndarray) -> np.ndarray:
    """K = X Xᵀ in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def rbf_kernel(x: np.ndarray, sigma_frac: float = 1.0) -> np.ndarray:
    """K_ij = exp(-|x_i-x_j|²/(2σ²)), σ = sigma_frac × median pairwise distance (Kornblith et al. 2019)."""
    d2 = cdist(np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64), "sqeuclidean")
    off = d2[~np.eye(len(d2), dtype=bool)]
    med = np.sqrt(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    sigma = sigma_frac * med
    return np.exp(-d2 / (2.0 * sigma**2))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """tr(K H L H) / (n-1)² (Gretton et al. 2005)."""
    n = len(k)
    h = np.eye(n) - 1.0 / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC_1 of Song et al. 2012 (Thm. 2), n >= 4."""
    n = len(k)
    if n < 4:
        raise ValueError(f"unbiased HSIC needs n >= 4 samples, got {n}")
    kt = np.array(k, dtype=np.float64)
    lt = np.array(l, dtype=np.float64)
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one_k, one_l = kt.sum(0), lt.sum(0)
    term = (kt * lt).sum() + one_k.sum() * one_l.sum() / ((n - 1) * (n - 2)) - 2.0 * (one_k @ one_l) / (n - 2)
    return float(term / (n * (n - 3)))


def _cka_from_kernels(k: np.ndarray, l: np.ndarray, unbiased: bool) -> float:
    f = hsic_unbiased if unbiased else hsic_biased
    return f(k, l) / np.sqrt(max(f(k, k) * f(l, l), _EPS))


def linear_cka(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA of X [n, p] and Y [n, q]."""
    return _cka_from_kernels(linear_kernel(x), linear_kernel(y), unbiased)


def rbf_cka(x: np.ndarray, y: np.ndarray, sigma_frac: float = 1.0, unbiased: bool = False) -> float:
    """RBF CKA of X [n, p] and Y [n, q], bandwidth by the median heuristic."""
    return _cka_from_kernels(rbf_kernel(x, sigma_frac), rbf_kernel(y, sigma_frac), unbiased)


def minibatch_cka(batches: Iterable[tuple[np.ndarray, np.ndarray]], kernel: str = "linear", sigma_frac: float = 1.0) -> float:
    """Nguyen et al. 2021 eq. 3: mean_b HSIC_1(K_b,L_b) / sqrt(mean_b HSIC_1(K_b,K_b) · mean_b HSIC_1(L_b,L_b))."""
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    kf = linear_kernel if kernel == "linear" else (lambda a: rbf_kernel(a, sigma_frac))
    xy = xx = yy = 0.0
    for x, y in batches:
        k, l = kf(x), kf(y)
        xy += hsic_unbiased(k, l)
        xx += hsic_unbiased(k, k)
        yy += hsic_unbiased(l, l)
    return xy / np.sqrt(max(xx * yy, _EPS))


class StreamingLinearCKA:
    """Exact linear CKA over all rows, accumulated batch by batch in feature space (no n × n matrix).

    Two passes: `update_mean` over every batch, then `update` over every batch (rows centered
    by the first-pass means, so centering is exact). Memory O(p·q + p² + q²).
    """

    def __init__(self, p: int, q: int) -> None:
        self.p, self.q = p, q
        self.n = 0
        self.sx, self.sy = np.zeros(p), np.zeros(q)
        self._centered = False
        self._reset_second()

    def _reset_second(self) -> None:
        p, q = self.p, self.q
        self.m = 0
        self.xty, self.xtx, self.yty = np.zeros((p, q)), np.zeros((p, p)), np.zeros((q, q))
        self.cx, self.cy = np.zeros(p), np.zeros(q)  # Σ x_i, Σ y_i of centered rows (≈ 0)
        self.nx2y2 = self.nx4 = self.ny4 = 0.0  # Σ|x|²|y|², Σ|x|⁴, Σ|y|⁴
        self.x_ny2, self.y_nx2 = np.zeros(p), np.zeros(q)  # Σ|y_i|² x_i, Σ|x_i|² y_i
        self.x_nx2, self.y_ny2 = np.zeros(p), np.zeros(q)
        self.snx2 = self.sny2 = 0.0

    def update_mean(self, x: np.ndarray, y: np.ndarray) -> None:
        """First pass: accumulate row sums."""
        self.n += len(x)
        self.sx += np.asarray(x, dtype=np.float64).sum(0)
        self.sy += np.asarray(y, dtype=np.float64).sum(0)

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Second pass: accumulate the feature-space statistics of centered rows."""
        x = np.asarray(x, dtype=np.float64) - self.sx / self.n
        y = np.asarray(y, dtype=np.float64) - self.sy / self.n
        nx2, ny2 = (x * x).sum(1), (y * y).sum(1)
        self.m += len(x)
        self.xty += x.T @ y
        self.xtx += x.T @ x
        self.yty += y.T @ y
        self.cx += x.sum(0)
        self.cy += y.sum(0)
        self.nx2y2 += float(nx2 @ ny2)
        self.nx4 += float(nx2 @ nx2)
        self.ny4 += float(ny2 @ ny2)
        self.x_ny2 += x.T @ ny2
        self.y_nx2 += y.T @ nx2
        self.x_nx2 += x.T @ nx2
        self.y_ny2 += y.T @ ny2
        self.snx2 += float(nx2.sum())
        self.sny2 += float(ny2.sum())

    @staticmethod
    def _hsic1(n: int, tr_kl: float, sk: float, sl: float, kl1: float) -> float:
        """Song et al. HSIC_1 from tr(K̃L̃), 1ᵀK̃1, 1ᵀL̃1, 1ᵀK̃L̃1."""
        return (tr_kl + sk * sl / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3))

    def result(self, unbiased: bool = False) -> float:
        """CKA from the accumulated statistics."""
        n = self.m
        if n != self.n:
            raise RuntimeError(f"second pass saw {n} rows, first pass {self.n}")
        if not unbiased:
            return float(np.sum(self.xty**2) / np.sqrt(max(np.sum(self.xtx**2) * np.sum(self.yty**2), _EPS)))
        if n < 4:
            raise ValueError(f"unbiased HSIC needs n >= 4 samples, got {n}")
        cx, cy = self.cx, self.cy
        # K̃ = XXᵀ with zero diagonal: (K̃1)_i = x_i·Σx - |x_i|², so 1ᵀK̃L̃1 expands into accumulated sums.
        tr = {
            "xy": np.sum(self.xty**2) - self.nx2y2,
            "xx": np.sum(self.xtx**2) - self.nx4,
            "yy": np.sum(self.yty**2) - self.ny4,
        }
        s = {"x": cx @ cx - self.snx2, "y": cy @ cy - self.sny2}
        kl1 = {
            "xy": cx @ self.xty @ cy - cx @ self.x_ny2 - cy @ self.y_nx2 + self.nx2y2,
            "xx": cx @ self.xtx @ cx - 2 * cx @ self.x_nx2 + self.nx4,
            "yy": cy @ self.yty @ cy - 2 * cy @ self.y_ny2 + self.ny4,
        }
        hxy = self._hsic1(n, tr["xy"], s["x"], s["y"], kl1["xy"])
        hxx = self._hsic1(n, tr["xx"], s["x"], s["x"], kl1["xx"])
        hyy = self._hsic1(n, tr["yy"], s["y"], s["y"], kl1["yy"])
        return float(hxy / np.sqrt(max(hxx * hyy, _EPS)))


def streaming_linear_cka(batches: "callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]", unbiased: bool = False) -> float:
    """Exact linear CKA over batches yielded by `batches()` (called twice: means, then statistics)."""
    it = iter(batches())
    first = next(it)
    acc = StreamingLinearCKA(first[0].shape[1], first[1].shape[1])
    acc.update_mean(*first)
    for x, y in it:
        acc.update_mean(x, y)
    for x, y in batches():
        acc.update(x, y)
    return acc.result(unbiased)


def _site(ds: xr.Dataset, site: str) -> xr.DataArray:
    """[example, layer, feature] representation of a named site."""
    if site == "last_prompt":
        return ds["hook_resid_post"].sel(query="last_prompt", drop=True)
    if site in ("visual", "text", "answer"):
        return ds["hook_resid_post_pooled"].sel(segment=site, drop=True)
    raise ValueError(f"site must be last_prompt, visual, text or answer, got {site!r}")


class CKAMemoryError(ValueError):
    """The layer × layer accumulators would exceed the memory budget."""


def cka_matrix(
    a: xr.Dataset, b: xr.Dataset | None = None, site: str = "last_prompt", unbiased: bool = False,
    layers_a: list[int] | None = None, layers_b: list[int] | None = None, max_bytes: float = 2e9,
) -> xr.DataArray:
    """Linear CKA layer × layer between stores a and b (or a with itself) at `site`, streamed by example chunks.

    Examples are matched on shared ids; rows with NaN in either store are dropped. Memory is
    O(|layers_a|·|layers_b|·(p·q + p² + q²)) float64 accumulators, never n × n; above
    `max_bytes` it raises CKAMemoryError (pick fewer layers).
    """
    a = as_dataset(a)
    b = a if b is None else as_dataset(b)
    xa, xb = _site(a, site), _site(b, site)
    shared = np.intersect1d(to_str(a["example"].values), to_str(b["example"].values))
    if len(shared) < 4:
        raise ValueError(f"cka_matrix: the stores share only {len(shared)} example ids (need >= 4)")
    xa, xb = xa.sel(example=shared), xb.sel(example=shared)
    if layers_a is not None:
        xa = xa.sel(layer=list(layers_a))
    if layers_b is not None:
        xb = xb.sel(layer=list(layers_b))
    la, lb = xa["layer"].values, xb["layer"].values
    need = 8.0 * len(la) * len(lb) * (xa.sizes["feature"] * xb.sizes["feature"] + xa.sizes["feature"] ** 2 + xb.sizes["feature"] ** 2)
    if need > max_bytes:
        raise CKAMemoryError(f"cka_matrix: {len(la)}×{len(lb)} layers at d={xa.sizes['feature']} need {need / 1e9:.1f} GB "
                             f"of accumulators (> {max_bytes / 1e9:.1f} GB); pass layers_a / layers_b")
    chunks = example_chunks(a.sel(example=shared))
    ok = (~xa.isnull().any(("layer", "feature")) & ~xb.isnull().any(("layer", "feature"))).values
    pa, pb = xa.sizes["feature"], xb.sizes["feature"]
    accs = [[StreamingLinearCKA(pa, pb) for _ in lb] for _ in la]
    for second in (False, True):
        for sl in chunks:
            m = ok[sl]
            if not m.any():
                continue
            ya = xa.isel(example=sl).transpose("example", "layer", "feature").values[m]
            yb = xb.isel(example=sl).transpose("example", "layer", "feature").values[m]
            for i in range(len(la)):
                for j in range(len(lb)):
                    (accs[i][j].update if second else accs[i][j].update_mean)(ya[:, i], yb[:, j])
    out = np.array([[acc.result(unbiased) for acc in row] for row in accs])
    return xr.DataArray(out, dims=("layer_a", "layer_b"), coords={"layer_a": la, "layer_b": lb}, attrs={"site": site, "unbiased": int(unbiased)})


def pooled_cka(a: xr.Dataset, var_a: str = "projector_out", b: xr.Dataset | None = None, var_b: str = "vision_out", unbiased: bool = False) -> float:
    """Linear CKA across examples of two token variables mean-pooled per example (e.g. projector output vs vision tower).

    Token counts may differ (pixel-unshuffle, tiles): each example is the NaN-aware mean of its valid tokens.
    """
    a = as_dataset(a)
    b = a if b is None else as_dataset(b)
    for ds, v in ((a, var_a), (b, var_b)):
        if v not in ds:
            raise KeyError(f"pooled_cka: store lacks variable {v!r}")
    shared = np.intersect1d(to_str(a["example"].values), to_str(b["example"].values))
    xa, xb = a[var_a].sel(example=shared), b[var_b].sel(example=shared)
    tok_a, tok_b = xa.dims[1], xb.dims[1]
    chunks = example_chunks(a.sel(example=shared))

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for sl in chunks:
            pa = xa.isel(example=sl).mean(tok_a, skipna=True).values
            pb = xb.isel(example=sl).mean(tok_b, skipna=True).values
            ok = np.isfinite(pa).all(1) & np.isfinite(pb).all(1)
            yield pa[ok], pb[ok]

    return streaming_linear_cka(batches, unbiased)


def permutation_null_cka(x: np.ndarray, y: np.ndarray, n_perm: int = 20, seed: int = 0, unbiased: bool = True) -> tuple[float, float]:
    """Linear CKA of X against row-shuffled Y (no relation between rows): (mean, 95th percentile) over n_perm shuffles.

    The value a "no relation" pair of the same shapes scores; biased CKA of small n and large
    d sits far above 0 here, unbiased CKA near 0.
    """
    rng = np.random.default_rng(seed)
    k, l = linear_kernel(x), linear_kernel(y)  # shuffling Y's rows permutes L's rows and columns
    vals = []
    for _ in range(n_perm):
        p = rng.permutation(len(y))
        vals.append(_cka_from_kernels(k, l[np.ix_(p, p)], unbiased))
    return float(np.mean(vals)), float(np.percentile(vals, 95))


def pooled_cka_with_null(a: xr.Dataset, var_a: str = "projector_out", var_b: str = "vision_out", n_perm: int = 20) -> dict[str, float]:
    """Unbiased linear CKA across examples of two example-pooled token variables, with its no-relation null.

    `cka` (unbiased), `cka_biased`, and the permutation null of the unbiased value (`null_mean`,
    `null_p95`: examples of one variable shuffled). Pooled rows are one per example, so they are held in memory.
    """
    a = as_dataset(a)
    rows_a, rows_b = [], []
    for sl in example_chunks(a):
        pa = a[var_a].isel(example=sl).mean(a[var_a].dims[1], skipna=True).values
        pb = a[var_b].isel(example=sl).mean(a[var_b].dims[1], skipna=True).values
        ok = np.isfinite(pa).all(1) & np.isfinite(pb).all(1)
        rows_a.append(pa[ok])
        rows_b.append(pb[ok])
    x, y = np.concatenate(rows_a).astype(np.float64), np.concatenate(rows_b).astype(np.float64)
    if len(x) < 4:
        raise ValueError(f"pooled_cka_with_null: {len(x)} examples with both {var_a} and {var_b} (need >= 4)")
    null_mean, null_p95 = permutation_null_cka(x, y, n_perm)
    return {"cka": linear_cka(x, y, unbiased=True), "cka_biased": linear_cka(x, y), "null_mean": null_mean,
            "null_p95": null_p95, "n": int(len(x))}
