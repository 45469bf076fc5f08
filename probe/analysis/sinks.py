"""Visual attention sinks (Kang et al., "See What You Are Told: Visual Attention Sink in LMMs", ICLR 2025).

Definition followed (their Sec. 3, DimProspector): a token is a sink when its RMS-normalised
hidden state |h / rms(h)| exceeds tau in any of a few model-specific *sink dimensions* — the
dimensions that carry massive activations. Deliberate differences: the sink dimensions are
detected from the store as massive-activation dims (peak |h| >= massive_ratio × median |h| in
most layers, Sun et al. 2024), not taken from a per-model table; tau defaults to
20·sqrt(d/4096), the paper's tau=20 for d_model=4096 rescaled because |h_i / rms(h)| <= sqrt(d);
and a sink token must also be massive in raw magnitude (see `sink_mask`).

As in Kang et al.: only attention layers 2 onward are analysed, each with the sink tokens of the
residual state ENTERING it (the store's state after layer l-1); a before/after comparison
detects the dimensions once, on the base (before) store, and uses them on both sides. Guard
(ours): a candidate dimension that is large on many tokens (a dense "outlier feature",
Dettmers et al. 2022, not a sink carrier) is dropped: more than `max_token_frac` of tokens over
the massive threshold in it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from probe.analysis._io import as_dataset, example_chunks, require
from probe.vocab import to_str
from probe.analysis.stats import BootstrapConfig, bootstrap_relative_change, groups_of
from probe.segments import Segment


def default_tau(d_model: int) -> float:
    """The paper's tau=20 at d_model=4096, rescaled by sqrt(d/4096)."""
    return 20.0 * float(np.sqrt(d_model / 4096.0))


def rms_normalized_abs(h: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """|h / sqrt(mean(h²) + eps)| over the last axis."""
    h = np.asarray(h, dtype=np.float64)
    return np.abs(h / np.sqrt(np.mean(h**2, axis=-1, keepdims=True) + eps))


def massive_dim_scores(ds: xr.Dataset, massive_ratio: float = 20.0) -> xr.DataArray:
    """Peak |h_dim| / median |h| per layer × feature over every valid token (chunk by chunk).

    The median is the median of per-chunk medians (exact for one chunk). attrs['median']
    holds it per layer; attrs['token_frac'] [layer, feature] the fraction of tokens whose |h_dim|
    is >= massive_ratio × their chunk's median |h| (how dense the dimension is).
    """
    ds = as_dataset(ds)
    require(ds, "hook_resid_post_tokens", "segment_ids", where="massive_dim_scores")
    h = ds["hook_resid_post_tokens"].transpose("example", "layer", "position", "feature")
    peak = np.zeros((h.sizes["layer"], h.sizes["feature"]))
    medians = []
    over, n_tok = np.zeros_like(peak), 0
    for sl in example_chunks(ds):
        x = h.isel(example=sl).values
        valid = ds["segment_ids"].isel(example=sl).values >= 0  # [e, p]
        e, p = np.nonzero(valid)
        tok = np.abs(x[e, :, p, :])  # [n, L, d], valid tokens only
        peak = np.fmax(peak, tok.max(axis=0))
        chunk_med = np.median(np.moveaxis(tok, 1, 0).reshape(tok.shape[1], -1), axis=1)
        medians.append(chunk_med)
        over += (tok >= massive_ratio * chunk_med[None, :, None]).sum(0)
        n_tok += len(tok)
    med = np.median(np.stack(medians), axis=0)
    score = peak / np.maximum(med, 1e-12)[:, None]
    return xr.DataArray(score, dims=("layer", "feature"), coords={"layer": h["layer"].values},
                        attrs={"median": med.tolist(), "token_frac": (over / max(n_tok, 1)).tolist()})


def find_sink_dims(
    ds: xr.Dataset, massive_ratio: float = 20.0, min_layer_frac: float = 0.5, top_k: int = 4, max_token_frac: float = 0.2
) -> xr.DataArray:
    """Sink dimensions: features whose peak |h| exceeds massive_ratio × median |h| in >= min_layer_frac of layers.

    Dense dimensions (over the threshold on more than max_token_frac of tokens in those layers,
    averaged) are dropped. At most top_k, ranked by the mean ratio over layers; empty when the
    model has no massive activations. attrs['dense_dims'] lists the dropped ones.
    """
    scores = massive_dim_scores(ds, massive_ratio)
    massive = (scores >= massive_ratio).values
    frac = massive.mean(0)
    mean = scores.mean("layer").values
    tok = np.asarray(scores.attrs["token_frac"])
    dense_frac = np.where(massive, tok, 0.0).sum(0) / np.maximum(massive.sum(0), 1)
    dense = np.flatnonzero((frac >= min_layer_frac) & (dense_frac > max_token_frac))
    cand = np.flatnonzero((frac >= min_layer_frac) & (dense_frac <= max_token_frac))
    cand = cand[np.argsort(-mean[cand], kind="stable")][:top_k]
    return xr.DataArray(
        np.sort(cand).astype(np.int64), dims="sink_dim",
        attrs={"massive_ratio": massive_ratio, "median": scores.attrs["median"], "layer": scores["layer"].values.tolist(),
               "dense_dims": dense.tolist()},
    )


def sink_mask(
    ds: xr.Dataset, dims: np.ndarray | xr.DataArray, tau: float | None = None, massive_ratio: float = 20.0
) -> xr.DataArray:
    """Lazy bool [example, layer, position]: visual positions that are sink tokens.

    A token is a sink when, in some sink dim, |h/rms(h)| > tau (the paper's rule) and
    |h| > massive_ratio × the layer's median |h| (the massive-activation rule of Sun et al.
    2024, which keeps the rule meaningful for small d_model where |h/rms(h)| <= sqrt(d) is small).
    """
    ds = as_dataset(ds)
    require(ds, "hook_resid_post_tokens", "segment_ids", where="sink_mask")
    h = ds["hook_resid_post_tokens"]
    tau = default_tau(h.sizes["feature"]) if tau is None else tau
    med = dims.attrs.get("median") if isinstance(dims, xr.DataArray) else None
    dims = np.asarray(dims, dtype=np.int64)
    visual = ds["segment_ids"] == int(Segment.VISUAL)
    if len(dims) == 0:
        return (visual & False).expand_dims(layer=h["layer"].values).transpose("example", "layer", "position")
    if med is None:
        med = massive_dim_scores(ds, massive_ratio).attrs["median"]
    med = xr.DataArray(np.asarray(med, dtype=np.float64), dims="layer", coords={"layer": h["layer"].values})
    hd = abs(h.isel(feature=dims).astype(np.float64))
    rms = np.sqrt((h.astype(np.float64) ** 2).mean("feature") + 1e-6)
    hit = ((hd / rms > tau) & (hd > massive_ratio * med)).any("feature")
    return (hit & visual).transpose("example", "layer", "position")


FIRST_LAYER = 2  # Kang et al. analyse layers 2 onward (the first two layers have no sinks yet)


def _mask_for_attention_layers(mask: xr.DataArray, attn_layers: np.ndarray) -> xr.DataArray:
    """Per attention layer l >= 2, the sink mask of the residual entering l (the state after l-1); others dropped."""
    have = set(int(x) for x in mask["layer"].values)
    picks, keep = [], []
    for layer in attn_layers:
        if int(layer) >= FIRST_LAYER and int(layer) - 1 in have:
            picks.append(int(layer) - 1)
            keep.append(int(layer))
    m = mask.sel(layer=picks).assign_coords(layer=keep)
    return m


def sink_shares(ds: xr.Dataset, dims: np.ndarray | xr.DataArray | None = None, tau: float | None = None) -> xr.Dataset:
    """Per-example attention on sink / non-sink visual tokens: [example, layer, head, source] (lazy).

    Rows of `attn_pattern` (query slots) are summed over sink and over all visual key
    positions; `source` last_prompt is the last prompt query, answer the mean over answer slots.
    """
    ds = as_dataset(ds)
    require(ds, "attn_pattern", "hook_resid_post_tokens", "segment_ids", where="sink_shares")
    if dims is None:
        dims = find_sink_dims(ds)
    tau = default_tau(ds.sizes["feature"]) if tau is None else tau
    mask = _mask_for_attention_layers(sink_mask(ds, dims, tau), ds["attn_pattern"]["layer"].values)
    pat = ds["attn_pattern"].sel(layer=mask["layer"].values)
    visual = ds["segment_ids"] == int(Segment.VISUAL)
    sink = pat.where(mask, 0.0).sum("position", skipna=True)
    vis = pat.where(visual, 0.0).sum("position", skipna=True)
    absent = pat.isnull().all("position")
    sink, vis = sink.where(~absent), vis.where(~absent)
    q = [str(x) for x in pat["query"].values]
    ans = [x for x in q if x.startswith("answer")]

    def by_source(a: xr.DataArray) -> xr.DataArray:
        parts = [a.sel(query="last_prompt", drop=True)] if "last_prompt" in q else []
        names = ["last_prompt"] if parts else []
        if ans:
            parts.append(a.sel(query=ans).mean("query", skipna=True))
            names.append("answer")
        return xr.concat(parts, dim="source").assign_coords(source=names)

    s, v = by_source(sink), by_source(vis)
    out = xr.Dataset({"sink_share": s, "visual_share": v, "nonsink_share": v - s})
    out["n_sink"] = mask.sum("position")
    out.attrs.update(sink_dims=[int(x) for x in np.asarray(dims)], tau=float(tau))
    return out


def _per_example(ds: xr.Dataset, dims: xr.DataArray, tau: float | None) -> xr.Dataset:
    """sink_shares computed chunk by chunk along example and concatenated (reduced arrays only)."""
    parts = [sink_shares(ds.isel(example=sl), dims, tau).compute() for sl in example_chunks(ds)]
    out = xr.concat(parts, dim="example") if len(parts) > 1 else parts[0]
    out.attrs.update(parts[0].attrs)
    return out


def sink_summary(ds: xr.Dataset, dims: xr.DataArray | None = None, tau: float | None = None) -> xr.Dataset:
    """Mean sink/non-sink share per layer × head × source and the visual non-sink ratio (image-centric heads)."""
    ds = as_dataset(ds)
    dims = find_sink_dims(ds) if dims is None else dims
    per = _per_example(ds, dims, tau)
    mean = per[["sink_share", "nonsink_share", "visual_share"]].mean("example", skipna=True)
    mean["nonsink_ratio"] = mean["nonsink_share"] / mean["visual_share"]
    mean["n_sink"] = per["n_sink"].mean("example")
    mean.attrs.update(per.attrs)
    return mean


def sink_collapse(before: xr.Dataset, after: xr.Dataset, config: BootstrapConfig = BootstrapConfig()) -> xr.Dataset:
    """Before vs after of sink and non-sink visual share per layer × source (head mean), bootstrap CI.

    `*_sim_low/high`: simultaneous bands over the layers of each source (see attention_collapse).

    Sink dimensions are detected once, on the base (before) store, and used for both sides (Kang
    et al.); the massive-magnitude rule uses each store's own median |h|. Cluster bootstrap over
    the `group` coordinate when recorded.
    """
    before, after = as_dataset(before), as_dataset(after)
    dims = find_sink_dims(before)
    pb, pa = _per_example(before, dims, None), _per_example(after, np.asarray(dims), None)
    layers = np.intersect1d(pb["layer"].values, pa["layer"].values)
    sources = [s for s in pb["source"].values if s in set(pa["source"].values)]
    shared = np.intersect1d(to_str(pb["example"].values), to_str(pa["example"].values))
    paired = len(shared) >= 2
    if paired:
        gb, what = groups_of(before, shared)
        ga = None
    else:
        (gb, what), (ga, _) = groups_of(before, pb["example"].values), groups_of(after, pa["example"].values)
    out = xr.Dataset(coords={"layer": layers, "source": sources})
    for var in ("sink_share", "nonsink_share"):
        b = pb[var].sel(layer=layers, source=sources).mean("head")
        a = pa[var].sel(layer=layers, source=sources).mean("head")
        if paired:
            b, a = b.sel(example=shared), a.sel(example=shared)
        xb = b.transpose("example", "layer", "source").values
        xa = a.transpose("example", "layer", "source").values
        per_source = [np.arange(len(layers)) * len(sources) + si for si in range(len(sources))]
        res = bootstrap_relative_change(xb.reshape(len(xb), -1), xa.reshape(len(xa), -1), paired, config,
                                        groups=gb, groups_after=ga, simultaneous=per_source)
        for k, arr in res.items():
            out[f"{var}_{k}"] = (("layer", "source"), arr.reshape(len(layers), len(sources)))
    out.attrs.update(sink_dims=pb.attrs["sink_dims"], sink_dims_detected_on="before", dense_dims=dims.attrs["dense_dims"],
                     paired=int(paired), resampled=what, first_layer=FIRST_LAYER)
    return out
