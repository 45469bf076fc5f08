"""Compare refuses incomparable stores (or compares on their stated intersection), and every number the
report shows matches the value computed directly from the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from conftest import make_dataset, make_eval, write_trace_store  # noqa: F401  (make_eval: kept for other tests' use)
from probe.analysis import AnalysisConfig, BootstrapConfig, KeyspaceConfig, ProbeConfig
from probe.report import compare
from probe.report.summary import eval_table
from probe.store import IncomparableStoresError

CFG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=100), keyspace=KeyspaceConfig(max_tokens=50, cv=2), probes=ProbeConfig(cv=2))
SMALL = ["attn_share", "segment_ids", "seq_len", "projector_out", "n_vtoken"]


def _pair(tmp_path, b: xr.Dataset, a: xr.Dataset):
    return write_trace_store(tmp_path / "b", b), write_trace_store(tmp_path / "a", a)


def test_three_layers_against_two_is_refused_in_one_line(tmp_path) -> None:
    b = make_dataset(n=16)[SMALL].isel(layer=[0, 1, 2])
    a = make_dataset(n=16, after=True)[SMALL].isel(layer=[0, 1])
    pb, pa = _pair(tmp_path, b, a)
    with pytest.raises(IncomparableStoresError) as err:
        compare(pb, pa, tmp_path / "r.html", None, CFG)
    assert "\n" not in str(err.value) and "layer" in str(err.value)
    assert not (tmp_path / "r.html").exists()
    summary = compare(pb, pa, tmp_path / "r.html", None, CFG, intersect=True)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Compared on the explicit intersection" in text and "layer: 2 shared (3 before, 2 after)" in text
    assert summary["results"]["collapse"]["layers"]["coords"]["layer"]["data"] == [0, 1]


def test_keys_in_one_store_only_is_refused_or_left_out_and_said(tmp_path) -> None:
    b = make_dataset(n=16)[SMALL + ["hook_rot_k"]]
    a = make_dataset(n=16, after=True)[SMALL]
    pb, pa = _pair(tmp_path, b, a)
    with pytest.raises(IncomparableStoresError, match="hook_rot_k"):
        compare(pb, pa, tmp_path / "r.html", None, CFG)
    summary = compare(pb, pa, tmp_path / "r.html", None, CFG, intersect=True)
    assert any("hook_rot_k" in n for n in summary["intersection"])


def test_different_layer_selections_compare_only_layers_recorded_in_both(tmp_path) -> None:
    b, a = make_dataset(n=16)[SMALL].load(), make_dataset(n=16, after=True)[SMALL].load()
    b["attn_share"][:, 0] = np.nan  # before recorded attention at layers 1-3, after at 0-2
    a["attn_share"][:, 3] = np.nan
    summary = compare(b, a, tmp_path / "r.html", None, CFG, intersect=True)
    assert "attention layers recorded in both: [1, 2]" in " ".join(summary["intersection"])
    assert "nan" not in " ".join(summary["verdict"]).lower()


def _real_eval(ds: xr.Dataset, after: bool) -> xr.Dataset:
    """An eval group in the format probe.eval writes: per-example variables and an aggregate `lang` dim."""
    from probe.analysis.stats import BootstrapConfig
    from probe.eval.dependence import _aggregate

    n = ds.sizes["example"]
    rng = np.random.default_rng(3 if after else 2)
    correct = rng.random((3, n)) < (0.3 if after else 0.9)
    group = ds["group"].values if "group" in ds.coords else ds["example"].values
    per = xr.Dataset(
        {"correct": (("condition", "example"), correct), "chance_example": ("example", np.full(n, 0.25)),
         "visually_dependent": ("example", correct[0] & ~correct[1]), "has_partner": ("example", np.ones(n, bool)),
         "n_choices": ("example", np.full(n, 4))},
        coords={"condition": ["real", "blank", "mismatched"], "example": ds["example"].values,
                "example_lang": ("example", ds["lang"].values), "example_question_type": ("example", np.full(n, "colour")),
                "example_image_dependent": ("example", np.ones(n, bool)), "example_group": ("example", group),
                "example_rule": ("example", np.full(n, "ranked")), "example_source": ("example", np.full(n, "manifest"))},
    )
    return per.merge(_aggregate(per, BootstrapConfig(n_boot=200)))


def test_eval_table_uses_per_example_languages_not_the_aggregate_lang_dim() -> None:
    ds = make_dataset(n=20)
    ev = _real_eval(ds, after=True)
    t = eval_table(ev)
    for lang in ("en", "ko"):
        m = ev["example_lang"].values == lang
        truth = ev["correct"].values[:, m].mean(1)
        np.testing.assert_allclose([t[f"correct/{lang}"][c] for c in ("real", "blank", "mismatched")], truth, rtol=1e-12)
        assert t[f"correct/{lang}"]["real"] != float(ev["correct"].values[0, 0 if lang == "en" else 1])
    assert t["accuracy/lang=en/question_type=all/kind=image"]["real"] == pytest.approx(t["correct/en"]["real"])


def test_report_numbers_match_the_store(tmp_path) -> None:
    b, a = make_dataset(n=20), make_dataset(n=20, after=True)
    pb = write_trace_store(tmp_path / "b", b)
    pa = write_trace_store(tmp_path / "a", a)

    evb, eva = _real_eval(b, False), _real_eval(a, True)
    for p, ev in ((pb, evb), (pa, eva)):
        ev.to_zarr(p, group="eval", mode="w", consolidated=False, zarr_format=3)
    summary = compare(pb, pa, tmp_path / "r.html", tmp_path / "r.json", CFG)
    loaded = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    # eval tables
    for st, ev in (("before", evb), ("after", eva)):
        for lang in ("en", "ko"):
            m = ev["example_lang"].values == lang
            assert loaded["eval"][st][f"correct/{lang}"]["real"] == pytest.approx(ev["correct"].values[0, m].mean())
    # collapse per-layer values (the figure's lines) = head-mean visual share averaged over examples
    lay = summary["results"]["collapse"]["layers"]["data_vars"]
    truth_b = b["attn_share"].sel(segment="visual", source="last_prompt").mean(("example", "head")).values
    got_b = np.array(lay["layer_before"]["data"])[:, 0]
    np.testing.assert_allclose(got_b, truth_b, rtol=1e-5)
    # drift per-example cosine
    cos = np.array(summary["results"]["drift"]["data_vars"]["cosine"]["data"])
    xb, xa = b["projector_out"].values.astype(float), a["projector_out"].values.astype(float)
    truth = ((xb * xa).sum(-1) / (np.linalg.norm(xb, axis=-1) * np.linalg.norm(xa, axis=-1))).mean(-1)
    np.testing.assert_allclose(cos, truth, rtol=1e-5)
    # the reading states the numbers it shows
    assert f"{float(truth.mean()):.3f}" in summary["readings"]["drift"]


def test_identical_stores_say_mmd_can_be_negative(lazy_pair, tmp_path) -> None:
    b, _ = lazy_pair
    summary = compare(b, b, tmp_path / "r.html", None, CFG)
    line = [x for x in summary["verdict"] if x.startswith("projector drift")][0]
    mmd = summary["results"]["drift"]["data_vars"]["mmd2"]["data"]
    assert mmd <= 0 and "values at or below 0 mean no detectable difference" in line
    assert "unbiased linear CKA 1.000" in line


def test_a_recorded_group_is_the_resampling_unit_and_the_report_says_so(tmp_path) -> None:
    """Each image asked in en and ko (the fixture alternates languages): group = image, 10 units for 20 examples."""
    def grouped(ds: xr.Dataset) -> xr.Dataset:
        return ds[SMALL].assign_coords(group=("example", [f"img{i // 2}" for i in range(ds.sizes["example"])]))

    pb, pa = _pair(tmp_path, grouped(make_dataset(n=20)), grouped(make_dataset(n=20, after=True)))
    for p, after in ((pb, False), (pa, True)):
        _real_eval(grouped(make_dataset(n=20)), after).to_zarr(p, group="eval", mode="w", consolidated=False, zarr_format=3)
    from probe.analysis.pipeline import compare_stores

    ev = compare_stores(pb, pa, CFG)["eval"]["before"]
    assert list(ev["example_group"].values[:4]) == ["img0", "img0", "img1", "img1"]  # the store's units reach the eval
    summary = compare(pb, pa, tmp_path / "r.html", None, CFG)
    assert any(line.startswith("behaviour (ko)") for line in summary["verdict"])
    attrs = summary["results"]["collapse"]["layers"]["attrs"]
    assert attrs["resampled"] == "group (image)" and attrs["n_units"] == 10
    assert "Intervals resample independent units: group (image)." in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_analyze_with_an_incomparable_baseline_is_refused(tmp_path) -> None:
    from probe.report import report

    b = make_dataset(n=16)[SMALL].isel(layer=[0, 1, 2])
    a = make_dataset(n=16, after=True)[SMALL].isel(layer=[0, 1])
    pb, pa = _pair(tmp_path, b, a)
    with pytest.raises(IncomparableStoresError):
        report(pa, tmp_path / "s.html", None, CFG, baseline=pb)
    assert not (tmp_path / "s.html").exists()
    assert report(pa, tmp_path / "s.html", None, CFG, baseline=pb, intersect=True)["results"]
