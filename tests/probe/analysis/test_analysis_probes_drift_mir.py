"""Linear probes, projector drift and MIR on hand cases and the planted stores."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import make_dataset

from probe.analysis.drift import projector_drift, script_of, vocab_drift, vocab_neighbours
from probe.analysis.mir import _mir_arrays, frechet_distance, modality_integration_rate
from probe.analysis.probes import ProbeConfig, compare_probes
from probe.segments import Segment


def test_probes_separate_gone_from_unused(lazy_pair) -> None:
    pr = compare_probes(*lazy_pair, ProbeConfig(cv=3))
    np.testing.assert_allclose(pr["chance"].values, 14 / 40, atol=1e-12)  # 14 red, 13 green, 13 blue
    vis = pr["accuracy"].sel(site="visual_pooled", label="colour")
    lp = pr["accuracy"].sel(site="last_prompt", label="colour")
    assert (vis > 0.9).all()
    assert (lp.sel(store="before") > 0.9).all()
    assert (lp.sel(store="after") < 0.6).all()


def test_drift_hand_cases(lazy_pair) -> None:
    b, a = lazy_pair
    same = projector_drift(b, b)
    np.testing.assert_allclose(same["cosine"].values, 1.0, atol=1e-6)
    np.testing.assert_allclose(same["cka"].values, 1.0, atol=1e-6)
    # x == y: the unbiased estimate is 2(S - m)/(m(m-1)) - 2S/m² with S = ΣK, in [-2/m, 0]
    assert -2 / 320 <= float(same["mmd2"]) <= 0.0
    neg = projector_drift(b, b.assign(projector_out=-b["projector_out"]))
    np.testing.assert_allclose(neg["cosine"].values, -1.0, atol=1e-6)
    d = projector_drift(b, a)
    pb, pa = make_dataset()["projector_out"].values.astype(np.float64), make_dataset(after=True)["projector_out"].values.astype(np.float64)
    ref = (np.sum(pb * pa, -1) / np.linalg.norm(pb, axis=-1) / np.linalg.norm(pa, axis=-1)).mean(1)
    np.testing.assert_allclose(d["cosine"].values, ref, atol=1e-6)


def test_vocab_neighbours_hand_case() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    vocab = ["한국", "cat", "1"]
    r = vocab_neighbours(np.array([[2.0, 0.1], [0.1, 3.0]]), emb, vocab, k=1)
    assert r["neighbour"].values[:, 0].tolist() == [0, 1]
    np.testing.assert_allclose(r["script_share"].values, [0.5, 0.5, 0.0])
    assert [script_of(t) for t in ("Ġ가", "▁the", "42", "Я")] == ["hangul", "latin", "other", "other"]
    with pytest.raises(ValueError, match="vocabulary strings"):
        vocab_neighbours(np.ones((1, 2)), emb, vocab[:2])


def test_vocab_drift_hand_case() -> None:
    """Visual tokens sitting exactly on Latin words before and on Hangul words after (k=1)."""
    emb = np.eye(4) * np.array([[1.0], [2.0], [3.0], [4.0]])
    vocab = xr.Dataset({"embedding": (("vocab", "feature"), emb), "token": ("vocab", ["cat", "dog", "하늘", "7"])})

    def store(rows: list[list[int]]) -> xr.Dataset:
        tokens = np.stack([emb[r] * 5.0 for r in rows])  # scaled: cosine ignores scale
        return xr.Dataset({"projector_out": (("example", "vtoken", "feature"), tokens),
                           "n_vtoken": ("example", [len(r) for r in rows])},
                          coords={"example": [f"e{i}" for i in range(len(rows))]}, attrs={"vocab": vocab})

    v = vocab_drift(store([[0, 1], [1, 3]]), store([[2, 2], [2, 3]]), k=1)
    # before: cat, dog, dog, 7 -> latin 3/4, other 1/4; after: 하늘 x3, 7 -> hangul 3/4, other 1/4
    np.testing.assert_allclose(v["script_share"].sel(store="before").values, [0.0, 0.75, 0.25])
    np.testing.assert_allclose(v["script_share"].sel(store="after").values, [0.75, 0.0, 0.25])
    np.testing.assert_allclose(v["nearest_similarity"].values, [1.0, 1.0], atol=1e-12)
    assert float(v["top1_changed"]) == 0.75
    with pytest.raises(KeyError, match="vocab"):
        vocab_drift(store([[0]]).assign_attrs(vocab=None), store([[0]]))


def test_frechet_hand_cases() -> None:
    c = np.diag([1.0, 4.0])
    np.testing.assert_allclose(frechet_distance(np.zeros(2), c, np.zeros(2), c), 0.0, atol=1e-10)
    # 1-D: (mu1-mu2)² + (s1-s2)²
    np.testing.assert_allclose(frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])), 4 + 1, rtol=1e-10)


def test_streaming_mir_equals_in_memory_reference(lazy_pair) -> None:
    b = lazy_pair[0]
    mir = modality_integration_rate(b.chunk({"example": -1}))  # one chunk: exact medians
    ds = make_dataset()
    seg = ds["segment_ids"].values
    h = ds["hook_resid_post_tokens"].values.astype(np.float64)
    for li in range(h.shape[1]):
        e, p = np.nonzero(seg == Segment.VISUAL)
        after_image = np.arange(seg.shape[1])[None, :] > 9  # the fixture's visual span is positions 2-9
        et, pt = np.nonzero(np.isin(seg, [Segment.TEXT, Segment.ANSWER]) & after_image)
        ref = _mir_arrays(h[e, li, p], h[et, li, pt])
        np.testing.assert_allclose(mir.values[li], ref, rtol=1e-6)
    np.testing.assert_allclose(mir.attrs["overall"], np.log10(mir.values.sum()), rtol=1e-12)
    assert isinstance(mir, xr.DataArray) and mir.dims == ("layer",)
    chunked = modality_integration_rate(b)  # 4 chunks: median of chunk medians for the outlier fill
    np.testing.assert_allclose(chunked.values, mir.values, rtol=0.05)
