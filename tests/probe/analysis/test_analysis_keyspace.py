"""Key-space OOD: planted shift of visual keys at layers 2-3 (doubled after)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.covariance import LedoitWolf

from probe.analysis.keyspace import KeyspaceConfig, compare_keyspace, ood_scores

CFG = KeyspaceConfig(max_tokens=200, cv=3)


def test_scores_match_reference_formulas() -> None:
    rng = np.random.default_rng(0)
    v, t = rng.normal(2, 1, (30, 4)), rng.normal(0, 1, (40, 4))
    s = ood_scores(v, t, KeyspaceConfig(k=3, cv=3, seed=0))
    perm = np.random.default_rng(0).permutation(40)
    fit = t[perm[:20]]
    lw = LedoitWolf().fit(fit)
    diff = v - lw.location_
    ref = np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(lw.covariance_), diff)).mean()
    np.testing.assert_allclose(s["mahalanobis"], ref, rtol=1e-8)
    knn = np.sort(cdist(v, fit), axis=1)[:, 2].mean()
    np.testing.assert_allclose(s["knn"], knn, rtol=1e-10)
    assert s["auc"] > 0.9 and s["mmd2"] > 0.1


def test_planted_shift_by_layer_lang_and_store(lazy_pair) -> None:
    ks = compare_keyspace(*lazy_pair, CFG)
    assert set(ks["lang"].values) == {"en", "ko", "all"}
    before = ks.sel(store="before")
    shifted, plain = before.sel(layer=[2, 3]), before.sel(layer=[0, 1])
    assert (shifted["mahalanobis"] > 2 * shifted["mahalanobis_text"]).all()
    assert (shifted["auc"] > 0.9).all()
    assert (plain["auc"] < 0.7).all()
    assert (np.abs(plain["mahalanobis"] / plain["mahalanobis_text"] - 1) < 0.2).all()
    after = ks.sel(store="after", layer=[2, 3])
    assert (after["knn"] > shifted["knn"]).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        KeyspaceConfig(max_tokens=1)
