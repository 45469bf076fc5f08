"""Saved results (`compare --save`): read back as `compare_stores` returned them, only for the stores they came from."""

from __future__ import annotations

import shutil

import pytest
import xarray as xr

from conftest import make_dataset, make_eval, write_trace_store
from probe.analysis import AnalysisConfig, BootstrapConfig, KeyspaceConfig, ProbeConfig
from probe.analysis.saved import SavedResultsError, load_results
from probe.report import compare
from probe.report.verdict import saved_verdict, verdict
from probe.store import TraceStore

CFG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=50), keyspace=KeyspaceConfig(max_tokens=50, cv=2), probes=ProbeConfig(cv=2))


def _store(path, after: bool, seed: int = 0):
    ds = make_dataset(n=24, after=after, seed=seed)
    write_trace_store(path, ds)
    TraceStore.open(path).write_group("eval", make_eval(ds, after))
    return path


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    b, a = _store(root / "b.zarr", False), _store(root / "a.zarr", True)
    return b, a, compare(b, a, root / "c.html", None, CFG, save_to=a)


@pytest.fixture
def saved(saved_once, tmp_path):
    """A copy of the saved pair (copytree keeps file times, so the fingerprints still match) that a test may change."""
    b, a, summary = saved_once
    shutil.copytree(b.parent, tmp_path / "pair")
    return tmp_path / "pair" / b.name, tmp_path / "pair" / a.name, summary


def test_saved_results_read_back_as_computed(saved) -> None:
    b, a, summary = saved
    res, config = load_results(a, "compare", {"before": b, "after": a})
    assert config == CFG
    # oracle: the lines `compare` wrote when it saved, and its in-memory results
    assert verdict(res, config) == summary["verdict"] == saved_verdict(b, a) == saved_verdict(b, a, recompute=True)
    live = summary["results"]  # as the JSON summary holds them
    assert isinstance(res["mir"], xr.DataArray)
    xr.testing.assert_allclose(res["mir"].load(), xr.DataArray.from_dict(live["mir"]))
    assert res["mir"].attrs["overall_before"] == live["mir"]["attrs"]["overall_before"]
    xr.testing.assert_allclose(res["collapse"]["layers"].load(), xr.Dataset.from_dict(live["collapse"]["layers"]))
    assert res["collapse"]["band"]["last_prompt"]["layers"] == live["collapse"]["band"]["last_prompt"]["layers"]
    assert res["vocab_drift"] == live["vocab_drift"]["skipped"]  # Skipped notes are kept
    assert set(res) == set(live) | {"intersection", "eval"}  # the summary keeps eval apart


def test_saved_results_refused_for_another_pair_or_a_changed_store(saved, tmp_path) -> None:
    b, a, _ = saved
    other = _store(tmp_path / "other.zarr", False, seed=3)
    with pytest.raises(SavedResultsError, match="another before store"):
        load_results(a, "compare", {"before": other, "after": a})
    with pytest.raises(SavedResultsError, match="no saved results"):
        load_results(b, "compare", {"before": a, "after": b})
    with pytest.raises(SavedResultsError, match="of stores"):
        load_results(a, "compare", {"store": a})
    ds = make_dataset(n=24, after=False)
    TraceStore.open(b).write_group("eval", make_eval(ds, False))  # re-evaluated: same values, a new eval group
    for recompute in (False, True):
        with pytest.raises(SavedResultsError, match=r"another before store, or from .*b.zarr before it changed \(groups.eval"):
            saved_verdict(b, a, recompute=recompute)


def test_a_group_from_another_save_is_refused(saved) -> None:
    b, a, summary = saved
    st = TraceStore.open(a)
    st.write_group("compare/collapse-layers", st.read_group("compare/collapse-layers").load().assign_attrs(visblind_saved_id="x"))
    with pytest.raises(SavedResultsError, match="not from the save"):
        load_results(a, "compare", {"before": b, "after": a})


def test_cli_compare_save_writes_what_the_dashboard_reads(saved, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from probe.cli import app

    b, a, _ = saved
    shutil.rmtree(a / "compare")  # the copy's earlier save
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["compare", str(b), str(a), "--out", str(out), "--save"])
    assert result.exit_code == 0, result.output
    assert saved_verdict(b, a) == json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["verdict"]
