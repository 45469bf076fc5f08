"""The faster probes and key-space scores compute exactly the numbers of the plain sklearn calls (issue 24).

Oracle: sklearn's cross_val_score with a fresh StratifiedGroupKFold (what probe_accuracy called before the
folds were cached and the fits run in workers); and the same analysis run in one process. Equality is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.analysis._parallel import n_workers, run_jobs
from probe.analysis.keyspace import KeyspaceConfig, compare_keyspace, ood_scores
from probe.analysis.probes import ProbeConfig, _folds, compare_probes, probe_accuracy


def _reference_probe(x: np.ndarray, y: np.ndarray, config: ProbeConfig, groups: np.ndarray) -> tuple[float, float]:
    classes, counts = np.unique(y, return_counts=True)
    folds = int(min(config.cv, counts.min(), len(np.unique(groups))))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=config.c, max_iter=2000))
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=config.seed)
    s = cross_val_score(clf, x.astype(np.float64), y, cv=cv, groups=groups)
    return float(np.mean(s)), float(np.std(s))


def test_probe_accuracy_equals_cross_val_score_exactly() -> None:
    rng = np.random.default_rng(3)
    n_img = 50
    groups = np.repeat(np.arange(n_img), 2)
    y = np.repeat(rng.choice(["red", "green", "blue"], n_img), 2)
    x = rng.normal(0, 1, (2 * n_img, 12)) + (y == "red")[:, None] * 0.8
    for seed in (0, 5):
        cfg = ProbeConfig(cv=4, seed=seed, c=0.5)
        acc, _, sd = probe_accuracy(x, y, cfg, groups)
        assert (acc, sd) == _reference_probe(x, y, cfg, groups)
        # the cached folds are reused, and still give the same numbers the second time
        assert probe_accuracy(x, y, cfg, groups)[0] == acc
    assert _folds.cache_info().hits >= 2


def test_probes_do_not_depend_on_the_number_of_workers(lazy_pair) -> None:
    b, a = lazy_pair
    one = compare_probes(b, a, ProbeConfig(cv=3), n_jobs=1)
    two = compare_probes(b, a, ProbeConfig(cv=3), n_jobs=2)
    xr.testing.assert_identical(one, two)


def test_keyspace_does_not_depend_on_the_number_of_workers(lazy_pair) -> None:
    b, a = lazy_pair
    cfg = KeyspaceConfig(max_tokens=200)
    one = compare_keyspace(b, a, cfg, n_jobs=1)
    two = compare_keyspace(b, a, cfg, n_jobs=2)
    xr.testing.assert_identical(one, two)


def test_keyspace_auc_is_sklearns_cross_validated_auc() -> None:
    rng = np.random.default_rng(1)
    v, t = rng.normal(0.3, 1, (60, 6)), rng.normal(0, 1, (80, 6))
    cfg = KeyspaceConfig(cv=4)
    x, y = np.concatenate([v, t]), np.r_[np.ones(60), np.zeros(80)]
    ref = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), x, y,
                          cv=StratifiedKFold(4, shuffle=True, random_state=0), scoring="roc_auc")
    got = ood_scores(v, t, cfg)
    assert (got["auc"], got["auc_sd"]) == (float(np.mean(ref)), float(np.std(ref)))


def test_run_jobs_keeps_job_order_and_workers_setting(monkeypatch) -> None:
    assert run_jobs(pow, [(2, k) for k in range(6)], n_jobs=2) == [2**k for k in range(6)]
    monkeypatch.setenv("VISBLIND_JOBS", "3")
    assert n_workers() == 3
    monkeypatch.setenv("VISBLIND_JOBS", "x")
    with pytest.raises(ValueError, match="VISBLIND_JOBS"):
        n_workers()
