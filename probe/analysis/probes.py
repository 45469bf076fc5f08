"""Linear probes: is the label still decodable from the residual stream (gone vs unused)?

Cross-validation splits by the `group` coordinate (an image asked in two languages never sits
on both sides of a split; without `group`, by example, said in attrs['resampled']), and each
probe is paired with a control: the same probe on labels shuffled across groups (Hewitt &
Liang, EMNLP 2019). `selectivity` = accuracy − control accuracy is the information beyond what
the probe's capacity fits to arbitrary labels. The best layer is a selection on the same folds:
readings call it exploratory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.analysis._io import as_dataset, to_str
from probe.analysis.stats import groups_of

SITES = ("visual_pooled", "last_prompt")


@dataclass(frozen=True)
class ProbeConfig:
    """Cross-validation settings of the linear probes."""

    cv: int = 5
    c: float = 1.0
    seed: int = 0
    max_examples: int = 5000

    def __post_init__(self) -> None:
        if self.cv < 2 or self.c <= 0 or self.max_examples < 4:
            raise ValueError(f"need cv >= 2, c > 0, max_examples >= 4; got {self}")


def label_names(ds: xr.Dataset) -> list[str]:
    """Names of the label_* coordinates (without the prefix)."""
    return sorted(str(c)[len("label_") :] for c in ds.coords if str(c).startswith("label_"))


def probe_labels(ds: xr.Dataset) -> list[str]:
    """Labels with at least two classes among the examples (a constant label has nothing to decode)."""
    out = []
    for lab in label_names(ds):
        values = to_str(ds[f"label_{lab}"].values)
        if len(np.unique(values[values != ""])) >= 2:
            out.append(lab)
    return out


def _site_array(ds: xr.Dataset, site: str) -> xr.DataArray | None:
    if site == "visual_pooled" and "hook_resid_post_pooled" in ds:
        return ds["hook_resid_post_pooled"].sel(segment="visual", drop=True)
    if site == "last_prompt" and "hook_resid_post" in ds:
        return ds["hook_resid_post"].sel(query="last_prompt", drop=True)
    return None


def shuffled_labels(y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Control-task labels: each group gets the label of a randomly chosen other group (class balance kept)."""
    ug, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    perm = np.random.default_rng(seed).permutation(len(ug))
    return y[first][perm][inv.ravel()]


def probe_accuracy(
    x: np.ndarray, y: np.ndarray, config: ProbeConfig = ProbeConfig(), groups: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(Group-CV accuracy of a standardised logistic regression, majority-class chance, SD over folds) for X [n, d], labels y.

    Folds never split a group (None: each row its own group).
    """
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    ok = np.isfinite(x).all(1) & (y != "")
    x, y, groups = x[ok], y[ok], groups[ok]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return float("nan"), float("nan"), float("nan")
    chance = float(counts.max() / counts.sum())
    folds = int(min(config.cv, counts.min(), len(np.unique(groups))))
    if folds < 2:
        return float("nan"), chance, float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=config.c, max_iter=2000))
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=config.seed)
    scores = cross_val_score(clf, x.astype(np.float64), y, cv=cv, groups=groups)
    return float(np.mean(scores)), chance, float(np.std(scores))


def linear_probes(ds: xr.Dataset, labels: list[str] | None = None, config: ProbeConfig = ProbeConfig()) -> xr.Dataset:
    """Group-CV accuracy (SD over folds), shuffled-label control accuracy, selectivity and chance per (layer, site, label)."""
    ds = as_dataset(ds)
    labels = probe_labels(ds) if labels is None else labels
    sites = [s for s in SITES if _site_array(ds, s) is not None]
    if not labels or not sites:
        raise KeyError("linear_probes: store has no label_* coordinate or no residual variable")
    n = ds.sizes["example"]
    idx = np.arange(n)
    if n > config.max_examples:
        idx = np.sort(np.random.default_rng(config.seed).choice(n, config.max_examples, replace=False))
    groups, what = groups_of(ds)
    groups = groups[idx]
    layers = _site_array(ds, sites[0])["layer"].values
    acc = np.full((len(layers), len(sites), len(labels)), np.nan)
    chance, sd, control = np.full_like(acc, np.nan), np.full_like(acc, np.nan), np.full_like(acc, np.nan)
    for si, site in enumerate(sites):
        arr = _site_array(ds, site).isel(example=idx).transpose("example", "layer", "feature")
        for li, layer in enumerate(layers):
            if layer not in arr["layer"].values:
                continue
            x = arr.sel(layer=layer).values  # one layer at a time: [n, feature]
            for bi, lab in enumerate(labels):
                y = to_str(ds[f"label_{lab}"].values[idx])
                acc[li, si, bi], chance[li, si, bi], sd[li, si, bi] = probe_accuracy(x, y, config, groups)
                control[li, si, bi] = probe_accuracy(x, shuffled_labels(y, groups, config.seed + 1), config, groups)[0]
    dims = ("layer", "site", "label")
    return xr.Dataset(
        {"accuracy": (dims, acc), "chance": (dims, chance), "accuracy_sd": (dims, sd),
         "control_accuracy": (dims, control), "selectivity": (dims, acc - control)},
        coords={"layer": layers, "site": sites, "label": labels},
        attrs={"cv": config.cv, "seed": config.seed, "resampled": what, "cv_split_by": what.split(" ")[0]},
    )


def compare_probes(before: xr.Dataset, after: xr.Dataset, config: ProbeConfig = ProbeConfig()) -> xr.Dataset:
    """linear_probes of both stores on a `store` dim (before, after)."""
    labels = sorted(set(probe_labels(as_dataset(before))) & set(probe_labels(as_dataset(after))))
    b, a = linear_probes(before, labels, config), linear_probes(after, labels, config)
    return xr.concat([b, a], dim="store", join="inner").assign_coords(store=["before", "after"])
