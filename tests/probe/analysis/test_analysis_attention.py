"""Visual-attention collapse on the synthetic stores with a planted 40% fall at layers 2-3."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_dataset

from probe.analysis.attention import attention_collapse, share_change, top_changed_heads
from probe.analysis.stats import BootstrapConfig, bootstrap_relative_change

CFG = BootstrapConfig(n_boot=300, seed=0)


def test_collapse_matches_float64_means_and_planted_fall(lazy_pair) -> None:
    b, a = lazy_pair
    c = attention_collapse(b, a, CFG)
    eb = make_dataset()["attn_share"].sel(segment="visual").values.astype(np.float64)
    ea = make_dataset(after=True)["attn_share"].sel(segment="visual").values.astype(np.float64)
    np.testing.assert_allclose(c["before"].values, eb.mean(0), atol=1e-6)
    np.testing.assert_allclose(c["rel_change"].values, ea.mean(0) / eb.mean(0) - 1, atol=1e-6)
    np.testing.assert_allclose(c["layer_rel_change"].sel(layer=[2, 3]).values, -0.4, atol=0.01)
    hi = c["layer_rel_high"].sel(layer=[2, 3]).values
    lo = c["layer_rel_low"].sel(layer=[2, 3]).values
    assert (hi < 0).all() and (lo < -0.39).all() and (hi > -0.41).all()
    low01, high01 = c["layer_rel_low"].sel(layer=[0, 1]).values, c["layer_rel_high"].sel(layer=[0, 1]).values
    assert (low01 < 0.02).all() and (high01 > -0.02).all()
    assert c.attrs["paired"] == 1 and c.attrs["n_before"] == 40


def test_unpaired_when_ids_differ(lazy_pair) -> None:
    """Different ids: each side resampled on its own; the intervals equal a direct unpaired bootstrap of the arrays."""
    b, a = lazy_pair
    a2 = a.assign_coords(example=[f"other{i}" for i in range(a.sizes["example"])])
    c = attention_collapse(b, a2, CFG)
    assert c.attrs["paired"] == 0
    xb = make_dataset()["attn_share"].sel(segment="visual").values.astype(np.float64).mean(2)  # [example, layer, source]
    xa = make_dataset(after=True)["attn_share"].sel(segment="visual").values.astype(np.float64).mean(2)
    ids_b, ids_a = b["example"].values.astype(str), a2["example"].values.astype(str)  # each example its own unit
    ref = bootstrap_relative_change(xb.reshape(40, -1), xa.reshape(40, -1), False, CFG, groups=ids_b, groups_after=ids_a)
    np.testing.assert_allclose(c["layer_rel_low"].values.ravel(), ref["rel_low"], rtol=1e-6)
    np.testing.assert_allclose(c["layer_rel_high"].values.ravel(), ref["rel_high"], rtol=1e-6)
    paired = bootstrap_relative_change(xb.reshape(40, -1), xa.reshape(40, -1), True, CFG)
    assert not np.allclose(paired["rel_low"], ref["rel_low"])  # pairing changes the intervals, not the estimate


def test_top_heads_are_in_changed_layers(lazy_pair) -> None:
    top = top_changed_heads(attention_collapse(*lazy_pair, CFG), "last_prompt", k=5)
    assert set(top["layer"].values) <= {2, 3}
    assert top.sizes["rank"] == 5
    assert np.all(np.diff(np.abs(top["diff"].values)) <= 1e-12)


def test_share_change_band(lazy_pair) -> None:
    r = share_change(*lazy_pair, layers=[2, 3], source="answer", config=CFG)
    assert r["rel_low"] <= r["rel_change"] <= r["rel_high"]
    np.testing.assert_allclose(r["rel_change"], -0.4, atol=0.01)


def test_missing_variable_is_named(lazy_pair) -> None:
    b, a = lazy_pair
    with pytest.raises(KeyError, match="attn_share"):
        attention_collapse(b.drop_vars("attn_share"), a, CFG)
    with pytest.raises(TypeError, match="expected an xr.Dataset"):
        attention_collapse(3, a, CFG)
