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
from functools import lru_cache

import numpy as np
import xarray as xr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.analysis._io import as_dataset
from probe.vocab import to_str
from probe.analysis._parallel import run_jobs
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


@lru_cache(maxsize=256)
def _folds(y: tuple, groups: tuple, n_folds: int, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """StratifiedGroupKFold's (train, test) indices for these labels and groups, computed once per distinct input.

    Every layer and site (and both stores of a comparison) probes the same labels on the same groups: the
    greedy group assignment is the same each time, so it is computed once.
    """
    cv = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    return tuple(cv.split(np.zeros((len(y), 1)), np.asarray(y), np.asarray(groups)))


def _fold_scores(x: np.ndarray, y: np.ndarray, folds: tuple, c: float) -> np.ndarray:
    """Test accuracy of a standardised logistic regression fit on each fold's training rows.

    The same fits and scores as sklearn's cross_val_score over `folds` (a fresh pipeline per fold, NaN for a
    fit that fails), without its per-fold bookkeeping.
    """
    scores = np.full(len(folds), np.nan)
    for i, (train, test) in enumerate(folds):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        try:
            scores[i] = clf.fit(x[train], y[train]).score(x[test], y[test])
        except (ValueError, np.linalg.LinAlgError):
            continue
    return scores


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
    split = _folds(tuple(y.tolist()), tuple(groups.tolist()), folds, config.seed)
    scores = _fold_scores(x.astype(np.float64), y, split, config.c)
    return float(np.mean(scores)), chance, float(np.std(scores))


def _probe_layer(x: np.ndarray, ys: list[np.ndarray], groups: np.ndarray, config: ProbeConfig) -> list[tuple[float, ...]]:
    """One layer and site: (accuracy, chance, sd, control accuracy) for each label in `ys`."""
    out = []
    for y in ys:
        acc, chance, sd = probe_accuracy(x, y, config, groups)
        out.append((acc, chance, sd, probe_accuracy(x, shuffled_labels(y, groups, config.seed + 1), config, groups)[0]))
    return out


def _probe_jobs(ds: xr.Dataset, labels: list[str], config: ProbeConfig) -> tuple[list[tuple], dict]:
    """The (layer, site) jobs of linear_probes and what is needed to assemble their results."""
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
    ys = [to_str(ds[f"label_{lab}"].values[idx]) for lab in labels]
    layers = _site_array(ds, sites[0])["layer"].values
    jobs, where = [], []
    for si, site in enumerate(sites):
        arr = _site_array(ds, site).isel(example=idx).transpose("example", "layer", "feature")
        for li, layer in enumerate(layers):
            if layer not in arr["layer"].values:
                continue
            jobs.append((arr.sel(layer=layer).values, ys, groups, config))  # one layer at a time: [n, feature]
            where.append((li, si))
    return jobs, {"where": where, "layers": layers, "sites": sites, "labels": labels, "what": what}


def _probe_dataset(results: list, meta: dict, config: ProbeConfig) -> xr.Dataset:
    layers, sites, labels = meta["layers"], meta["sites"], meta["labels"]
    acc = np.full((len(layers), len(sites), len(labels)), np.nan)
    chance, sd, control = np.full_like(acc, np.nan), np.full_like(acc, np.nan), np.full_like(acc, np.nan)
    for (li, si), per_label in zip(meta["where"], results):
        for bi, (a, ch, s, ctl) in enumerate(per_label):
            acc[li, si, bi], chance[li, si, bi], sd[li, si, bi], control[li, si, bi] = a, ch, s, ctl
    dims = ("layer", "site", "label")
    what = meta["what"]
    return xr.Dataset(
        {"accuracy": (dims, acc), "chance": (dims, chance), "accuracy_sd": (dims, sd),
         "control_accuracy": (dims, control), "selectivity": (dims, acc - control)},
        coords={"layer": layers, "site": sites, "label": labels},
        attrs={"cv": config.cv, "seed": config.seed, "resampled": what, "cv_split_by": what.split(" ")[0]},
    )


def linear_probes(ds: xr.Dataset, labels: list[str] | None = None, config: ProbeConfig = ProbeConfig(),
                  n_jobs: int | None = None) -> xr.Dataset:
    """Group-CV accuracy (SD over folds), shuffled-label control accuracy, selectivity and chance per (layer, site, label).

    The (layer, site) probes run in `n_jobs` worker processes (default: see probe.analysis._parallel); the
    numbers do not depend on it.
    """
    jobs, meta = _probe_jobs(ds, labels, config)
    return _probe_dataset(run_jobs(_probe_layer, jobs, n_jobs), meta, config)


def compare_probes(before: xr.Dataset, after: xr.Dataset, config: ProbeConfig = ProbeConfig(),
                   n_jobs: int | None = None) -> xr.Dataset:
    """linear_probes of both stores on a `store` dim (before, after); the jobs of both run in one pool."""
    labels = sorted(set(probe_labels(as_dataset(before))) & set(probe_labels(as_dataset(after))))
    jb, mb = _probe_jobs(before, labels, config)
    ja, ma = _probe_jobs(after, labels, config)
    results = run_jobs(_probe_layer, jb + ja, n_jobs)
    b, a = _probe_dataset(results[: len(jb)], mb, config), _probe_dataset(results[len(jb):], ma, config)
    return xr.concat([b, a], dim="store", join="inner").assign_coords(store=["before", "after"])
