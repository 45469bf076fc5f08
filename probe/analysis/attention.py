"""Visual-attention collapse: share of attention on visual tokens, before vs after, with bootstrap CIs."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from probe.analysis._io import as_dataset, require
from probe.vocab import to_str
from probe.analysis.stats import BootstrapConfig, bootstrap_relative_change, groups_of
from probe.vocab import QUERY_SOURCES as SOURCES  # noqa: F401  (one definition: probe.vocab)


def visual_share(ds: xr.Dataset, segment: str = "visual") -> xr.DataArray:
    """Per-example share of attention on `segment`: [example, layer, head, source] (lazy)."""
    ds = as_dataset(ds)
    require(ds, "attn_share", where="visual_share")
    return ds["attn_share"].sel(segment=segment)


def _pairing(before: xr.Dataset, after: xr.Dataset) -> tuple[bool, np.ndarray | None]:
    """Paired when the stores share example ids; returns the shared ids in before's order."""
    ib = to_str(before["example"].values)
    ia = set(to_str(after["example"].values))
    shared = np.array([e for e in ib if e in ia])
    return (len(shared) >= 2, shared if len(shared) >= 2 else None)


def attention_collapse(
    before: xr.Dataset, after: xr.Dataset, config: BootstrapConfig = BootstrapConfig(), segment: str = "visual"
) -> xr.Dataset:
    """Visual share before/after per layer × head × source, per layer (head mean) and overall.

    Variables `{before, after, rel_change, rel_low, rel_high, diff, diff_low, diff_high}` on
    dims (layer, head, source); the same with prefix `layer_` on (layer, source) for the
    mean over heads, and `all_` on (source,) for the mean over layers and heads. Independent
    units are resampled (cluster percentile bootstrap over the `group` coordinate, else over
    examples; attrs['resampled'] says which), paired on shared example ids, else unpaired.
    `layer_{rel,diff}_sim_{low,high}` is a simultaneous band over the layers of each source
    (max-t): every layer's interval covers at once with probability ci, so layers may be picked
    from it without the selection invalidating their intervals. Per-head intervals are pointwise.
    """
    before, after = as_dataset(before), as_dataset(after)
    vb, va = visual_share(before, segment), visual_share(after, segment)
    layers = np.intersect1d(vb["layer"].values, va["layer"].values)
    if len(layers) == 0:
        raise ValueError("attention_collapse: the stores share no captured layer")
    if vb.sizes["head"] != va.sizes["head"]:
        raise ValueError(f"attention_collapse: head counts differ ({vb.sizes['head']} vs {va.sizes['head']})")
    sources = [s for s in vb["source"].values if s in set(va["source"].values)]
    paired, shared = _pairing(before, after)
    vb = vb.sel(layer=layers, source=sources)
    va = va.sel(layer=layers, source=sources)
    if paired:
        vb, va = vb.sel(example=shared), va.sel(example=shared)
        gb, resampled = groups_of(before, shared)
        ga = None
    else:
        (gb, resampled), (ga, _) = groups_of(before), groups_of(after)
    xb = vb.transpose("example", "layer", "head", "source").values.astype(np.float64)
    xa = va.transpose("example", "layer", "head", "source").values.astype(np.float64)
    n_l, n_h, n_s = xb.shape[1:]
    # One bootstrap over per-head, per-layer and overall columns so every CI uses the same resamples.
    cols_b = [xb.reshape(len(xb), -1), np.nanmean(xb, axis=2).reshape(len(xb), -1), np.nanmean(xb, axis=(1, 2))]
    cols_a = [xa.reshape(len(xa), -1), np.nanmean(xa, axis=2).reshape(len(xa), -1), np.nanmean(xa, axis=(1, 2))]
    k1, k2 = n_l * n_h * n_s, n_l * n_s
    per_source = [k1 + np.arange(n_l) * n_s + si for si in range(n_s)]
    res = bootstrap_relative_change(np.concatenate(cols_b, 1), np.concatenate(cols_a, 1), paired, config,
                                    groups=gb, groups_after=ga, simultaneous=per_source)
    out = xr.Dataset(coords={"layer": layers, "head": vb["head"].values, "source": sources})
    for name, arr in res.items():
        out[f"layer_{name}"] = (("layer", "source"), arr[k1 : k1 + k2].reshape(n_l, n_s))
        if "_sim_" in name:
            continue
        out[name] = (("layer", "head", "source"), arr[:k1].reshape(n_l, n_h, n_s))
        out[f"all_{name}"] = (("source",), arr[k1 + k2 :])
    out.attrs.update(
        paired=int(paired), n_before=int(len(xb)), n_after=int(len(xa)), n_boot=config.n_boot,
        ci=config.ci, seed=config.seed, segment=segment, resampled=resampled,
        n_units=int(len(np.unique(gb))),
    )
    return out


def top_changed_heads(collapse: xr.Dataset, source: str = "last_prompt", k: int = 10) -> xr.Dataset:
    """The k (layer, head) pairs with the largest absolute change of share for `source`.

    Exploratory: the heads are selected on the same data as their (pointwise) intervals, so the
    intervals over-state certainty (winner's curse); attrs['exploratory'] = 1 says so.
    """
    d = collapse["diff"].sel(source=source).stack(lh=("layer", "head"))
    d = d.where(np.isfinite(d), 0.0)
    order = np.argsort(-np.abs(d.values), kind="stable")[:k]
    sub = collapse.sel(source=source).stack(lh=("layer", "head")).isel(lh=order)
    keep = ["before", "after", "diff", "diff_low", "diff_high", "rel_change", "rel_low", "rel_high"]
    out = sub[keep].reset_index("lh").rename({"lh": "rank"}).assign_coords(rank=np.arange(len(order)))
    out.attrs.update(exploratory=1, n_candidates=int(d.size), source=source)
    return out


def share_change(
    before: xr.Dataset, after: xr.Dataset, layers: list[int] | None = None, source: str = "last_prompt",
    config: BootstrapConfig = BootstrapConfig(), segment: str = "visual",
) -> dict[str, float]:
    """Relative change of the visual share averaged over `layers` (all if None) and heads, with its CI."""
    before, after = as_dataset(before), as_dataset(after)
    vb, va = visual_share(before, segment).sel(source=source), visual_share(after, segment).sel(source=source)
    if layers is not None:
        vb, va = vb.sel(layer=list(layers)), va.sel(layer=list(layers))
    paired, shared = _pairing(before, after)
    if paired:
        vb, va = vb.sel(example=shared), va.sel(example=shared)
        gb, ga = groups_of(before, shared)[0], None
    else:
        gb, ga = groups_of(before)[0], groups_of(after)[0]
    xb = vb.mean(("layer", "head"), skipna=True).values[:, None]
    xa = va.mean(("layer", "head"), skipna=True).values[:, None]
    res = bootstrap_relative_change(xb, xa, paired, config, groups=gb, groups_after=ga)
    return {k: float(v[0]) for k, v in res.items()}


def changed_layers(collapse: xr.Dataset, source: str) -> dict[str, list[int]]:
    """Layers whose simultaneous band lies wholly below 0 ('fell') or above 0 ('rose')."""
    c = collapse.sel(source=source)
    lo, hi = c["layer_rel_sim_low"].values, c["layer_rel_sim_high"].values
    layers = [int(x) for x in c["layer"].values]
    return {"fell": [ly for ly, h in zip(layers, hi) if h < 0], "rose": [ly for ly, low in zip(layers, lo) if low > 0]}


def changed_band(
    collapse: xr.Dataset, before: xr.Dataset, after: xr.Dataset, source: str, config: BootstrapConfig = BootstrapConfig()
) -> dict[str, Any]:
    """The layers whose visual share changed, chosen selection-free, with an interval valid after the choice.

    Layers are those whose simultaneous band (see attention_collapse) excludes 0, on the side of
    the largest such change. Their summary is the mean of the per-layer relative changes; its
    interval is the mean of their simultaneous bounds, which covers the true mean whenever the
    band covers every layer (probability >= ci), whatever the data chose. With no such layer, the
    band is every layer (a pre-specified set) with its ordinary interval; `selected` says which.
    """
    ch = changed_layers(collapse, source)
    c = collapse.sel(source=source)
    rel = c["layer_rel_change"].values
    layers = [int(x) for x in c["layer"].values]
    cand = ch["fell"] + ch["rose"]
    if not cand or not np.isfinite(rel).any():
        return {"layers": layers, "selected": 0, **share_change(before, after, layers, source, config)}
    big = max(cand, key=lambda ly: abs(rel[layers.index(ly)]))
    band = ch["fell"] if big in ch["fell"] else ch["rose"]
    sub = c.sel(layer=band)
    return {
        "layers": band, "selected": 1,
        "before": float(sub["layer_before"].mean()), "after": float(sub["layer_after"].mean()),
        "rel_change": float(sub["layer_rel_change"].mean()),
        "rel_low": float(sub["layer_rel_sim_low"].mean()), "rel_high": float(sub["layer_rel_sim_high"].mean()),
        "diff": float(sub["layer_diff"].mean()),
        "diff_low": float(sub["layer_diff_sim_low"].mean()), "diff_high": float(sub["layer_diff_sim_high"].mean()),
    }
