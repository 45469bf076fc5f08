"""MIR token set and sink rules (Huang et al.; Kang et al.) on planted structure with known answers."""

from __future__ import annotations

import numpy as np
import xarray as xr

from conftest import SINK_DIM, make_dataset
from probe.analysis.mir import modality_integration_rate
from probe.analysis.sinks import find_sink_dims, sink_collapse, sink_shares
from probe.analysis.stats import BootstrapConfig


def _mir_stores() -> tuple[xr.Dataset, xr.Dataset]:
    ds = make_dataset(n=20)[["hook_resid_post_tokens", "segment_ids"]].load()
    massive = ds.copy(deep=True)
    massive["hook_resid_post_tokens"][:, :, 0, :] = 500.0  # BOS-like massive token before the image
    padded = ds.copy(deep=True)
    seg = padded["segment_ids"].values.copy()
    seg[:, 0:2] = -1  # the text before the image removed altogether
    padded["segment_ids"] = (("example", "position"), seg)
    return massive, padded


def test_mir_token_set_is_text_after_the_image() -> None:
    massive, padded = _mir_stores()
    a, b = modality_integration_rate(massive), modality_integration_rate(padded)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-10)
    assert a.attrs["text_tokens"] == "text after the image"


def _planted_sink_layers() -> xr.Dataset:
    """Sink at position 2 only in the state after layer 1 (entering layer 2); attention puts 0.3 on it."""
    ds = make_dataset(n=20).load()
    tok = ds["hook_resid_post_tokens"].values.copy()
    tok[:, :, 2, SINK_DIM] = np.where(ds["layer"].values == 1, 60.0, 0.5)[None, :]
    tok[:, 1, 3, SINK_DIM] = 60.0  # a second sink token after layer 1 (few tokens: still a sink dim)
    ds["hook_resid_post_tokens"] = (ds["hook_resid_post_tokens"].dims, tok)
    return ds


def test_sinks_use_layers_two_onward_and_the_state_entering_the_layer() -> None:
    ds = _planted_sink_layers()
    dims = xr.DataArray(np.array([SINK_DIM]), dims="sink_dim")
    s = sink_shares(ds, dims).compute()
    assert list(s["layer"].values) == [2, 3]  # layers 0 and 1 are not analysed
    # layer 2 sees the state after layer 1: sink tokens 2 and 3; layer 3 sees the state after layer 2: none
    np.testing.assert_allclose(s["sink_share"].sel(layer=2, source="last_prompt").values, 0.30 + 0.20 / 7, rtol=1e-5)
    np.testing.assert_allclose(s["sink_share"].sel(layer=3).values, 0.0, atol=1e-12)


def test_dense_outlier_dimensions_are_not_sink_dimensions() -> None:
    ds = make_dataset(n=20).load()
    tok = ds["hook_resid_post_tokens"].values.copy()
    valid = ds["segment_ids"].values >= 0
    for dim in (9, 11):  # dense outliers: large on every token
        tok[:, :, :, dim] = np.where(valid[:, None, :], 40.0, np.nan)
    ds["hook_resid_post_tokens"] = (ds["hook_resid_post_tokens"].dims, tok)
    dims = find_sink_dims(ds)
    assert list(dims.values) == [SINK_DIM]
    assert dims.attrs["dense_dims"] == [9, 11]
    n_sink = sink_shares(ds, dims)["n_sink"].sel(layer=2).values
    assert np.all(n_sink == 1)  # only the planted sink, not all 8 visual tokens


def test_sink_dims_are_detected_on_the_base_and_reused() -> None:
    b = make_dataset(n=20).load()
    a = make_dataset(n=20, after=True).load()
    tok = a["hook_resid_post_tokens"].values.copy()
    tok[:, :, :, SINK_DIM] = np.where(np.isnan(tok[:, :, :, SINK_DIM]), np.nan, 0.1)  # after: the sink dim is gone
    tok[:, :, 4, 13] = 60.0  # and another dim became massive
    a["hook_resid_post_tokens"] = (a["hook_resid_post_tokens"].dims, tok)
    s = sink_collapse(b, a, BootstrapConfig(n_boot=100))
    assert s.attrs["sink_dims"] == [SINK_DIM] and s.attrs["sink_dims_detected_on"] == "before"
    np.testing.assert_allclose(s["sink_share_after"].values, 0.0, atol=1e-12)  # base dims find no sink after
    np.testing.assert_allclose(s["sink_share_before"].sel(source="last_prompt").values, 0.30, rtol=1e-5)
