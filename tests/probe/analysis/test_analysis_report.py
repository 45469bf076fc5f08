"""The offline HTML report and JSON summary from a planted before/after pair."""

from __future__ import annotations

import json
import re

from probe.analysis import AnalysisConfig, BootstrapConfig, KeyspaceConfig, ProbeConfig, Skipped, analyze
from probe.report import compare, report

CFG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=200), keyspace=KeyspaceConfig(max_tokens=100, cv=3), probes=ProbeConfig(cv=3))


def test_compare_writes_offline_html_and_json(store_pair, tmp_path) -> None:
    out_html, out_json = tmp_path / "r.html", tmp_path / "r.json"
    summary = compare(*store_pair, out_html, out_json, CFG)
    text = out_html.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inline, no CDN
    assert text.count("Plotly.newPlot") >= 6
    assert re.search(r"visual share from last_prompt at layers 2–3 fell (39|40)\.\d% \[\d+\.\d–\d+\.\d%\]", text)
    assert "Behavioural visual dependence" in text
    loaded = json.loads(out_json.read_text(encoding="utf-8"))
    assert loaded["readings"] == summary["readings"]
    assert loaded["eval"]["after"]["correct"]["real"] < loaded["eval"]["before"]["correct"]["real"]
    assert loaded["skipped"] == ["CKA projector output vs vision tower: skipped, store lacks vision_out"]
    assert loaded["config"]["bootstrap"]["n_boot"] == 200  # the analysis config is saved with the results
    assert re.match(r"nearest vocabulary embeddings of visual tokens \(top 5, \d+ tokens\): hangul", loaded["readings"]["vocab_drift"])
    band = loaded["results"]["collapse"]["band"]["last_prompt"]
    assert band["layers"] == [2, 3] and band["rel_low"] <= band["rel_change"] <= band["rel_high"]
    assert "Resampled: example (the store records no group" in loaded["readings"]["collapse"]


def test_missing_inputs_are_skipped_with_a_note(lazy_pair, tmp_path) -> None:
    b, a = (ds.drop_vars(["hook_rot_k", "projector_out"]) for ds in lazy_pair)
    summary = compare(b, a, tmp_path / "r.html", None, CFG)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Key-space OOD of visual keys: skipped, store lacks hook_rot_k" in text
    assert "Projector drift: skipped, store lacks projector_out" in text
    assert "Behavioural visual dependence: skipped, a store lacks the 'eval' group (run `probe eval`)" in summary["skipped"]
    assert "collapse" in summary["readings"]


def test_analyze_single_store(store_pair, tmp_path) -> None:
    res = analyze(store_pair[0], CFG)
    assert set(res) == {"visual_share", "sinks", "keyspace", "probes", "mir", "cka", "projector_vision_cka", "eval"}
    assert [k for k, v in res.items() if isinstance(v, Skipped)] == ["projector_vision_cka"]
    assert res["cka"].dims == ("layer_a", "layer_b")
    s = report(store_pair[0], tmp_path / "s.html", tmp_path / "s.json", CFG)
    assert (tmp_path / "s.json").exists() and "visual_share" in s["results"]


def test_compare_reads_real_trace_stores(tmp_path) -> None:
    from conftest import make_dataset, write_trace_store

    pb = write_trace_store(tmp_path / "b", make_dataset())
    pa = write_trace_store(tmp_path / "a", make_dataset(after=True))
    summary = compare(pb, pa, tmp_path / "r.html", tmp_path / "r.json", CFG)
    band = summary["results"]["collapse"]["band"]["answer"]
    assert band["layers"] == [2, 3] and abs(band["rel_change"] + 0.4) < 0.01
    assert summary["results"]["sinks"]["attrs"]["sink_dims"] == [5]


def test_eval_table_is_generic() -> None:
    import numpy as np
    import xarray as xr

    from probe.report.summary import eval_table

    ev = xr.Dataset(
        {
            "correct": (("condition", "example"), np.array([[1, 1, 0, 1], [0, 1, 0, 0]], bool)),
            "prediction": (("condition", "example"), np.full((2, 4), "a")),
            "accuracy": (("condition", "lang"), np.array([[0.75, np.nan], [0.25, np.nan]])),
        },
        coords={"condition": ["real", "blank"], "example": list("abcd"), "lang": ["en", "ko"]},
    )
    t = eval_table(ev)
    assert t["correct"] == {"real": 0.75, "blank": 0.25}
    assert t["accuracy/lang=en"] == {"real": 0.75, "blank": 0.25}
    assert "accuracy/lang=ko" not in t and "prediction" not in t


def test_side_by_side_columns_equal_their_single_comparisons(store_pair, tmp_path) -> None:
    """Each column of the side-by-side report is exactly `compare` of that pair (readings, verdict), shown together."""
    import plotly.graph_objects as go

    from probe.report import compare_side_by_side

    before, after = store_pair
    extra = [("Extra section", None, {"planted": [go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))], "itself": ["<p>none</p>"]})]
    both = compare_side_by_side(before, {"planted": after, "itself": before}, tmp_path / "s.html", tmp_path / "s.json",
                                CFG, extra=extra)
    for name, other in (("planted", after), ("itself", before)):
        one = compare(before, other, tmp_path / f"{name}.html", None, CFG)
        assert both["comparisons"][name]["readings"] == one["readings"], name
        assert both["comparisons"][name]["verdict"] == one["verdict"], name
    assert both["comparisons"]["planted"]["readings"] != both["comparisons"]["itself"]["readings"]
    text = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", text) and text.count("plotly.js v") == 1  # inline once
    assert "Extra section" in text and "<p>none</p>" in text
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["comparisons"]["planted"]["verdict"] == both["comparisons"]["planted"]["verdict"]
