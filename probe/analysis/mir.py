"""Modality Integration Rate per layer (Huang et al., ICCV 2025, arXiv 2410.07167; shikiw/Modality-Integration-Rate).

Per layer: scale both modalities by 1 / mean L2 norm of the text tokens (text-centric
normalisation), replace rows whose norm is more than 3 std from the median norm by the
per-feature median (3-sigma outlier removal), then the Fréchet distance between Gaussian fits
of vision and text tokens; overall MIR = log10 of the sum over layers. Deliberate difference:
means and covariances are accumulated chunk by chunk (store larger than memory), and the
per-feature median used for outlier replacement is the median of per-chunk medians (exact
when the store is one chunk).

Token set, as in the authors' code: vision tokens are the VISUAL positions; text tokens are the
TEXT and ANSWER positions AFTER the example's last visual position (a BOS or system prompt before
the image is left out: such massive tokens otherwise dominate the text statistics).
Deviation: their last entry is the hidden state after the final norm; the store holds residuals
after each decoder layer (before the final norm), so our last layer is the pre-norm residual.
Their default `--mode fast` never iterates its matrix square root (it computes tr(C1·C2), not
tr((C1·C2)^½)), i.e. it is not the Fréchet distance; ours is the exact one, so values match
their `--mode accurate`, the paper's definition.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.linalg import sqrtm

from probe.analysis._io import as_dataset, example_chunks, require
from probe.segments import Segment


def frechet_distance(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """|mu1-mu2|² + tr(C1 + C2 - 2 (C1 C2)^{1/2})."""
    cm = sqrtm(c1 @ c2)
    cm = np.real(cm)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(cm))


def _mir_arrays(vision: np.ndarray, text: np.ndarray) -> float:
    """MIR of one layer from in-memory vision [n, d] and text [m, d] tokens (the reference form)."""
    scale = 1.0 / np.linalg.norm(text, axis=1).mean()
    out = []
    for x in (vision * scale, text * scale):
        nrm = np.linalg.norm(x, axis=1)
        bad = np.abs(nrm - np.median(nrm)) > 3 * nrm.std(ddof=1)
        x = x.copy()
        x[bad] = np.median(x, axis=0)
        out.append(x)
    v, t = out
    return frechet_distance(v.mean(0), np.cov(v, rowvar=False), t.mean(0), np.cov(t, rowvar=False))


def token_masks(seg: np.ndarray) -> dict[str, np.ndarray]:
    """Bool [example, position] masks of the vision tokens and of the text tokens after each example's image."""
    visual = seg == int(Segment.VISUAL)
    pos = np.arange(seg.shape[1])[None, :]
    last_visual = np.where(visual.any(1), np.where(visual, pos, -1).max(1), seg.shape[1])[:, None]
    text = np.isin(seg, (int(Segment.TEXT), int(Segment.ANSWER))) & (pos > last_visual)
    return {"vision": visual, "text": text}


def modality_integration_rate(ds: xr.Dataset) -> xr.DataArray:
    """Per-layer MIR [layer] from hook_resid_post_tokens; attrs['overall'] = log10(Σ layers)."""
    ds = as_dataset(ds)
    require(ds, "hook_resid_post_tokens", "segment_ids", where="modality_integration_rate")
    h = ds["hook_resid_post_tokens"].transpose("example", "layer", "position", "feature")
    n_l, d = h.sizes["layer"], h.sizes["feature"]
    chunks = example_chunks(ds)
    classes = ("vision", "text")
    # Pass 1: token norms per layer/class, and per-chunk per-feature medians (before scaling).
    norms = {c: [[] for _ in range(n_l)] for c in classes}
    medians = {c: [[] for _ in range(n_l)] for c in classes}
    for sl in chunks:
        x = h.isel(example=sl).values.astype(np.float64)
        masks = token_masks(ds["segment_ids"].isel(example=sl).values)
        for c in classes:
            e, p = np.nonzero(masks[c])
            if len(e) == 0:
                continue
            tok = x[e, :, p, :]  # [n, L, d]
            med = np.median(tok, axis=0)  # [L, d]
            for li in range(n_l):
                norms[c][li].append(np.linalg.norm(tok[:, li], axis=1))
                medians[c][li].append(med[li])
    res = np.full(n_l, np.nan)
    stats = {}
    for li in range(n_l):
        nt = np.concatenate(norms["text"][li])
        if len(nt) < 2 or sum(len(a) for a in norms["vision"][li]) < 2:
            continue
        scale = 1.0 / nt.mean()
        stats[li] = {}
        for c in classes:
            nrm = np.concatenate(norms[c][li]) * scale
            med = np.median(nrm)
            stats[li][c] = dict(med=med, thr=3 * nrm.std(ddof=1), fill=np.median(np.stack(medians[c][li]), axis=0) * scale,
                                s=np.zeros(d), ss=np.zeros((d, d)), n=0, scale=scale)
    # Pass 2: accumulate means and covariances after normalisation and outlier replacement.
    for sl in chunks:
        x = h.isel(example=sl).values.astype(np.float64)
        masks = token_masks(ds["segment_ids"].isel(example=sl).values)
        for c in classes:
            e, p = np.nonzero(masks[c])
            tok = x[e, :, p, :]
            for li, st in stats.items():
                t = tok[:, li] * st[c]["scale"]
                bad = np.abs(np.linalg.norm(t, axis=1) - st[c]["med"]) > st[c]["thr"]
                t[bad] = st[c]["fill"]
                st[c]["s"] += t.sum(0)
                st[c]["ss"] += t.T @ t
                st[c]["n"] += len(t)
    for li, st in stats.items():
        moments = []
        for c in ("vision", "text"):
            n = st[c]["n"]
            mu = st[c]["s"] / n
            cov = (st[c]["ss"] - n * np.outer(mu, mu)) / (n - 1)
            moments += [mu, cov]
        res[li] = frechet_distance(*moments)
    total = np.nansum(res)
    return xr.DataArray(res, dims="layer", coords={"layer": h["layer"].values}, name="mir",
                        attrs={"overall": float(np.log10(total)) if total > 0 else float("nan"),
                               "text_tokens": "text after the image", "last_layer": "pre-final-norm residual"})
