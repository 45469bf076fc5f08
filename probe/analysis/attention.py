"""Visual-attention collapse: share of attention on visual tokens, before vs after, with bootstrap CIs."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probe.analysis._io import as_dataset, require, to_str
from probe.analysis.stats import BootstrapConfig, bootstrap_relative_change

SOURCES = ("last_prompt", "answer", "text")


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
    mean over heads, and `all_` on (source,) for the mean over layers and heads. Examples are
    resampled (percentile bootstrap, `config`), paired on shared example ids, else unpaired.
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
    xb = vb.transpose("example", "layer", "head", "source").values.astype(np.float64)
    xa = va.transpose("example", "layer", "head", "source").values.astype(np.float64)
    n_l, n_h, n_s = xb.shape[1:]
    # One bootstrap over per-head, per-layer and overall columns so every CI uses the same resamples.
    cols_b = [xb.reshape(len(xb), -1), np.nanmean(xb, axis=2).reshape(len(xb), -1), np.nanmean(xb, axis=(1, 2))]
    cols_a = [xa.reshape(len(xa), -1), np.nanmean(xa, axis=2).reshape(len(xa), -1), np.nanmean(xa, axis=(1, 2))]
    res = bootstrap_relative_change(np.concatenate(cols_b, 1), np.concatenate(cols_a, 1), paired, config)
    k1, k2 = n_l * n_h * n_s, n_l * n_s
    out = xr.Dataset(coords={"layer": layers, "head": vb["head"].values, "source": sources})
    for name, arr in res.items():
        out[name] = (("layer", "head", "source"), arr[:k1].reshape(n_l, n_h, n_s))
        out[f"layer_{name}"] = (("layer", "source"), arr[k1 : k1 + k2].reshape(n_l, n_s))
        out[f"all_{name}"] = (("source",), arr[k1 + k2 :])
    out.attrs.update(
        paired=int(paired), n_before=int(len(xb)), n_after=int(len(xa)), n_boot=config.n_boot,
        ci=config.ci, seed=config.seed, segment=segment,
    )
    return out


def top_changed_heads(collapse: xr.Dataset, source: str = "last_prompt", k: int = 10) -> xr.Dataset:
    """The k (layer, head) pairs with the largest absolute change of share for `source`."""
    d = collapse["diff"].sel(source=source).stack(lh=("layer", "head"))
    d = d.where(np.isfinite(d), 0.0)
    order = np.argsort(-np.abs(d.values), kind="stable")[:k]
    sub = collapse.sel(source=source).stack(lh=("layer", "head")).isel(lh=order)
    keep = ["before", "after", "diff", "diff_low", "diff_high", "rel_change", "rel_low", "rel_high"]
    return sub[keep].reset_index("lh").rename({"lh": "rank"}).assign_coords(rank=np.arange(len(order)))


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
    xb = vb.mean(("layer", "head"), skipna=True).values[:, None]
    xa = va.mean(("layer", "head"), skipna=True).values[:, None]
    res = bootstrap_relative_change(xb, xa, paired, config)
    return {k: float(v[0]) for k, v in res.items()}
