"""The analysis registry: one entry adds an analysis to the pipeline, the report and the headline."""

from __future__ import annotations


from probe.analysis import AnalysisConfig, BootstrapConfig, KeyspaceConfig, ProbeConfig, registry
from probe.analysis.registry import ANALYSES, Analysis
from probe.report import compare, report
from probe.report.presenters import PRESENTERS, Presenter, presenter

CFG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=50), keyspace=KeyspaceConfig(max_tokens=50, cv=2), probes=ProbeConfig(cv=2))


def _lines(result: object, config: object) -> list[str]:
    return [f"toy: {result:.1f}"] if isinstance(result, float) else [f"toy: not measured ({result})"]


def _reading(result: float, config: object) -> str:
    return f"toy reading {result:.1f}"


def test_names_are_unique_and_every_presenter_names_an_analysis() -> None:
    names = [a.name for a in ANALYSES]
    assert len(names) == len(set(names))
    assert set(PRESENTERS) <= set(names), sorted(set(PRESENTERS) - set(names))
    for a in ANALYSES:
        shown = presenter(a.name)
        for fn in (shown.figure_single, shown.figure_pair, shown.reading_single, shown.reading_pair, shown.verdict):
            assert fn is None or callable(fn), (a.name, fn)
        if a.single is None:  # a pair-only analysis has nothing to show for one store
            assert shown.figure_single is None and shown.reading_single is None, a.name


def test_one_entry_reaches_pipeline_report_and_verdict(lazy_pair, tmp_path, monkeypatch) -> None:
    toy = Analysis("toy", "Toy analysis", ("seq_len",), single=lambda x: float(x.before["seq_len"].mean()),
                   pair=lambda x: float(x.after["seq_len"].mean()))
    small = [a for a in ANALYSES if a.name in ("eval", "drift")]
    monkeypatch.setattr(registry, "ANALYSES", (*small, toy))
    monkeypatch.setitem(PRESENTERS, "toy", Presenter(reading_single=_reading, reading_pair=_reading, verdict=_lines))
    b, a = lazy_pair
    s = compare(b, a, tmp_path / "c.html", None, CFG)
    assert "toy: 18.0" in s["verdict"] and s["readings"]["toy"] == "toy reading 18.0"
    assert "Toy analysis" in (tmp_path / "c.html").read_text(encoding="utf-8")
    s = report(b, tmp_path / "s.html", None, CFG)
    assert s["results"]["toy"] == 18.0
    missing = compare(b.drop_vars("seq_len"), a, tmp_path / "m.html", None, CFG)
    assert "Toy analysis: skipped, store lacks seq_len" in missing["skipped"]


def test_an_analysis_must_compute_something() -> None:
    import pytest

    with pytest.raises(ValueError, match="computes nothing"):
        Analysis("x", "X")


def test_results_are_saved_as_store_groups_with_their_config(tmp_path) -> None:
    from conftest import make_dataset, write_trace_store
    from probe.store import TraceStore
    from probe.store.groups import group_config

    small = make_dataset(n=16)[["attn_share", "segment_ids", "seq_len", "hook_resid_post"]]
    p = write_trace_store(tmp_path / "s", small)
    s = report(p, tmp_path / "s.html", None, CFG, save=True)
    st = TraceStore.open(p)
    assert "analysis/visual_share" in s["saved_groups"] and "analysis/visual_share" in st.groups()
    ds = st.read_group("analysis/visual_share")
    assert group_config(ds)["bootstrap"]["n_boot"] == 50
    truth = small["attn_share"].sel(segment="visual", layer=2, head=0, source="last_prompt").values.astype(float).mean()
    assert abs(float(ds["mean"].sel(layer=2, head=0, source="last_prompt")) - truth) < 1e-12
