"""Key-space OOD of visual keys: how far post-RoPE visual keys lie from the text-key distribution.

Four scores per layer × kv_head × lang (the operationalisation of "intrinsic text bias through
attention key-space analysis"): mean Mahalanobis distance of visual keys under a Ledoit-Wolf
shrinkage covariance of text keys (with held-out text keys as the in-distribution baseline),
mean distance to the k-th nearest text key (same baseline), unbiased RBF-MMD² with the
median heuristic, and the cross-validated ROC AUC of a logistic regression separating the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from rich.progress import Progress, track
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.analysis._io import as_dataset, example_chunks, lang_of, require
from probe.analysis._parallel import run_jobs
from probe.analysis.stats import rbf_mmd2
from probe.segments import Segment

SCORES = ("mahalanobis", "mahalanobis_text", "knn", "knn_text", "mmd2", "auc", "auc_sd", "n_visual", "n_text")


@dataclass(frozen=True)
class KeyspaceConfig:
    """Sampling and estimator settings of the key-space scores."""

    max_tokens: int = 2000  # per class (visual / text) and lang; tokens are subsampled uniformly
    k: int = 5
    cv: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 10 or self.k < 1 or self.cv < 2:
            raise ValueError(f"need max_tokens >= 10, k >= 1, cv >= 2; got {self}")


def collect_keys(ds: xr.Dataset, config: KeyspaceConfig = KeyspaceConfig()) -> dict:
    """Subsampled visual and text keys per (lang, class): arrays [n, layer, kv_head, d_head], chunk by chunk."""
    ds = as_dataset(ds)
    require(ds, "hook_rot_k", "segment_ids", where="keyspace")
    k = ds["hook_rot_k"].transpose("example", "layer", "kv_head", "position", "d_head")
    langs = lang_of(ds)
    chunks = example_chunks(ds)
    rng = np.random.default_rng(config.seed)
    per_chunk = max(1, int(np.ceil(2 * config.max_tokens / len(chunks))))
    bags: dict[tuple[str, str], list[np.ndarray]] = {}
    for sl in track(chunks, description="key-space: reading keys", disable=len(chunks) < 4):
        x = k.isel(example=sl).values  # [e, L, KV, P, D]
        seg = ds["segment_ids"].isel(example=sl).values
        for lang in np.unique(langs[sl]):
            rows = np.flatnonzero(langs[sl] == lang)
            for cls, code in (("visual", Segment.VISUAL), ("text", Segment.TEXT)):
                e_idx, p_idx = np.nonzero(seg[rows] == int(code))
                if len(e_idx) == 0:
                    continue
                pick = rng.choice(len(e_idx), min(per_chunk, len(e_idx)), replace=False)
                tok = x[rows[e_idx[pick]], :, :, p_idx[pick], :]  # [n, L, KV, D]
                bags.setdefault((str(lang), cls), []).append(tok.astype(np.float64))
    out = {}
    for key, parts in bags.items():
        arr = np.concatenate(parts)
        if len(arr) > config.max_tokens:
            arr = arr[rng.choice(len(arr), config.max_tokens, replace=False)]
        out[key] = arr
    return {"keys": out, "layer": k["layer"].values, "kv_head": k["kv_head"].values}


def ood_scores(visual: np.ndarray, text: np.ndarray, config: KeyspaceConfig = KeyspaceConfig()) -> dict[str, float]:
    """The four OOD scores of visual keys [n_v, d] against text keys [n_t, d]."""
    rng = np.random.default_rng(config.seed)
    res = dict.fromkeys(SCORES, float("nan"))
    res["n_visual"], res["n_text"] = float(len(visual)), float(len(text))
    if len(visual) < 2 or len(text) < 4:
        return res
    perm = rng.permutation(len(text))
    fit, held = text[perm[: len(text) // 2]], text[perm[len(text) // 2 :]]
    lw = LedoitWolf().fit(fit)
    res["mahalanobis"] = float(np.mean(np.sqrt(lw.mahalanobis(visual))))
    res["mahalanobis_text"] = float(np.mean(np.sqrt(lw.mahalanobis(held))))
    k = min(config.k, len(fit))
    nn = NearestNeighbors(n_neighbors=k).fit(fit)
    res["knn"] = float(nn.kneighbors(visual)[0][:, -1].mean())
    res["knn_text"] = float(nn.kneighbors(held)[0][:, -1].mean())
    res["mmd2"] = rbf_mmd2(visual, text)
    folds = min(config.cv, len(visual), len(text))
    if folds >= 2:
        x = np.concatenate([visual, text])
        y = np.r_[np.ones(len(visual)), np.zeros(len(text))]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        cv = StratifiedKFold(folds, shuffle=True, random_state=config.seed)
        aucs = cross_val_score(clf, x, y, cv=cv, scoring="roc_auc")
        res["auc"], res["auc_sd"] = float(np.mean(aucs)), float(np.std(aucs))
    return res


def _scores(visual: np.ndarray, text: np.ndarray, config: KeyspaceConfig) -> list[float]:
    s = ood_scores(visual, text, config)
    return [s[name] for name in SCORES]


def _keyspace_jobs(ds: xr.Dataset, config: KeyspaceConfig) -> tuple[list[tuple], dict]:
    """The (layer, kv_head, lang) scoring jobs of keyspace_ood and what is needed to assemble their results."""
    got = collect_keys(ds, config)
    keys = got["keys"]
    langs = sorted({lang for lang, _ in keys})
    for cls in ("visual", "text"):
        parts = [keys[(lang, cls)] for lang in langs if (lang, cls) in keys]
        if parts:
            pooled = np.concatenate(parts)
            if len(pooled) > config.max_tokens:
                pooled = pooled[np.random.default_rng(config.seed).choice(len(pooled), config.max_tokens, replace=False)]
            keys[("all", cls)] = pooled
    lang_coord = langs + ["all"]
    layers, heads = got["layer"], got["kv_head"]
    jobs, where = [], []
    for li in range(len(layers)):
        for hi in range(len(heads)):
            for gi in range(len(lang_coord)):
                v, t = keys.get((lang_coord[gi], "visual")), keys.get((lang_coord[gi], "text"))
                if v is None or t is None:
                    continue
                jobs.append((np.ascontiguousarray(v[:, li, hi]), np.ascontiguousarray(t[:, li, hi]), config))
                where.append((li, hi, gi))
    return jobs, {"where": where, "layers": layers, "heads": heads, "langs": lang_coord}


def _keyspace_dataset(results: list, meta: dict, config: KeyspaceConfig) -> xr.Dataset:
    layers, heads, lang_coord = meta["layers"], meta["heads"], meta["langs"]
    arr = np.full((len(SCORES), len(layers), len(heads), len(lang_coord)), np.nan)
    for (li, hi, gi), values in zip(meta["where"], results):
        arr[:, li, hi, gi] = values
    out = xr.Dataset(
        {name: (("layer", "kv_head", "lang"), arr[i]) for i, name in enumerate(SCORES)},
        coords={"layer": layers, "kv_head": heads, "lang": lang_coord},
    )
    out.attrs.update(max_tokens=config.max_tokens, k=config.k, cv=config.cv, seed=config.seed)
    return out


def _score_all(jobs: list[tuple], n_jobs: int | None) -> list:
    with Progress(transient=False, disable=len(jobs) < 8) as bar:
        task = bar.add_task("key-space: scoring", total=len(jobs))
        results = run_jobs(_scores, jobs, n_jobs)
        bar.update(task, completed=len(jobs))
    return results


def keyspace_ood(ds: xr.Dataset, config: KeyspaceConfig = KeyspaceConfig(), n_jobs: int | None = None) -> xr.Dataset:
    """OOD scores of visual vs text keys: variables SCORES on dims (layer, kv_head, lang); lang 'all' pools.

    The (layer, kv_head, lang) scores run in `n_jobs` worker processes (default: see probe.analysis._parallel);
    the numbers do not depend on it.
    """
    jobs, meta = _keyspace_jobs(ds, config)
    return _keyspace_dataset(_score_all(jobs, n_jobs), meta, config)


def compare_keyspace(before: xr.Dataset, after: xr.Dataset, config: KeyspaceConfig = KeyspaceConfig(),
                     n_jobs: int | None = None) -> xr.Dataset:
    """keyspace_ood of both stores stacked on a `store` dim (before, after); the jobs of both run in one pool."""
    jb, mb = _keyspace_jobs(before, config)
    ja, ma = _keyspace_jobs(after, config)
    results = _score_all(jb + ja, n_jobs)
    b, a = _keyspace_dataset(results[: len(jb)], mb, config), _keyspace_dataset(results[len(jb):], ma, config)
    return xr.concat([b, a], dim="store", join="inner").assign_coords(store=["before", "after"])
