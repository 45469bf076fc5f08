"""Visual attention sinks: planted massive dim and sink position with known attention shares."""

from __future__ import annotations

import numpy as np
from conftest import SINK_DIM, SINK_POS

from probe.analysis.sinks import default_tau, find_sink_dims, rms_normalized_abs, sink_mask, sink_summary


def test_rms_normalized_hand_case() -> None:
    np.testing.assert_allclose(rms_normalized_abs(np.array([3.0, -4.0]), eps=0.0), [3 / np.sqrt(12.5), 4 / np.sqrt(12.5)], rtol=1e-12)
    np.testing.assert_allclose(default_tau(4096), 20.0)


def test_detects_planted_sink_dim_and_token(lazy_pair) -> None:
    b, _ = lazy_pair
    dims = find_sink_dims(b)
    assert dims.values.tolist() == [SINK_DIM]
    mask = sink_mask(b, dims).compute()
    hits = np.argwhere(mask.values.any(axis=(0, 1))).ravel()
    assert hits.tolist() == [SINK_POS]
    assert bool(mask.isel(position=SINK_POS).all())


def test_sink_and_nonsink_shares_are_the_planted_values(lazy_pair) -> None:
    s = sink_summary(lazy_pair[0])
    np.testing.assert_allclose(s["sink_share"].values, 0.30, atol=1e-6)
    np.testing.assert_allclose(s["nonsink_share"].values, 0.20, atol=1e-6)
    np.testing.assert_allclose(s["nonsink_ratio"].values, 0.4, atol=1e-6)


def test_no_massive_dims_means_no_sinks(lazy_pair) -> None:
    b = lazy_pair[0]
    tok = b["hook_resid_post_tokens"].where(b["hook_resid_post_tokens"] < 10, 0.5)
    b2 = b.assign(hook_resid_post_tokens=tok)
    assert find_sink_dims(b2).size == 0
    s = sink_summary(b2)
    np.testing.assert_allclose(s["sink_share"].values, 0.0, atol=1e-12)
    np.testing.assert_allclose(s["nonsink_share"].values, 0.5, atol=1e-6)
