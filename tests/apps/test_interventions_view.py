"""The dashboard's interventions view on a REAL `interventions run` over the model organism (not a fixture): the
numbers it shows are probe.results.run_summary of what the runner wrote, under the runner's own coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from probe.results import ResultError, read_run, run_summary
from probe.vocab import example_field


@pytest.fixture(scope="module")
def run_root(organism_cache, tmp_path_factory):
    """ROOT holding `exp/` = `interventions run` (CLI) of a small grid over the organism's base model (it uses the
    image), the Korean fine-tune as donor."""
    from typer.testing import CliRunner

    from interventions.cli import app

    org = organism_cache()
    root = tmp_path_factory.mktemp("iv_root")
    manifest = org.manifests["eval_image"]
    grid = root / "grid.yaml"
    grid.write_text(f"model: {org.base}\ndonor: {org.ko_ft}\nmanifest: {manifest}\nmax_examples: 24\nbatch_size: 16\n"
                    "chunk_examples: 12\ninterventions:\n  - {name: knockout, params: {layers: [[0, 1]]}}\n"
                    "  - {name: swap, params: {components: [[projector]]}}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(grid), "--out", str(root / "exp"), "--quiet"])
    assert result.exit_code == 0, result.output
    return root


def test_view_shows_what_the_runner_wrote(run_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from apps.launch import APP_FILE

    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(run_root))
    at = AppTest.from_file(str(APP_FILE), default_timeout=120)
    at.query_params["view"] = "interventions"
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="results").value == "exp/results.zarr"
    table = at.dataframe[0].value
    ds = read_run(run_root / "exp")
    summary = run_summary(ds, by="lang")
    assert set(table["condition"]) <= set(ds["condition"].values.tolist()) and "none" in set(table["condition"])
    assert len(table) == int(np.isfinite(summary["visual_dependence"].values).sum()) > 0
    assert (table[table["condition"] == "none"]["visual_dependence"] > 0).all()  # the base model uses the image
    for _, r in table.iterrows():
        sel = summary.sel(condition=r["condition"], lang=r["lang"])
        for col, var in (("visual_dependence", "visual_dependence"), ("ci_low", "visual_dependence_low"),
                         ("ci_high", "visual_dependence_high")):
            assert r[col] == pytest.approx(float(sel[var]), abs=1e-12)
        # and straight from the runner's per-example rows: the share of visually dependent image questions
        m = (example_field(ds, "lang") == r["lang"]) & example_field(ds, "image_dependent")
        vals = ds["visually_dependent"].sel(condition=r["condition"]).values[m]
        assert r["visual_dependence"] == pytest.approx(float(np.nanmean(vals)), abs=1e-12)
        assert r["n"] == int(np.isfinite(vals).sum())


def test_view_refuses_what_is_not_a_run(run_root, tmp_path):
    import xarray as xr

    from apps.views.interventions import open_results

    xr.Dataset({"x": ("a", [1.0])}).to_zarr(tmp_path / "other.zarr", consolidated=False)
    with pytest.raises(ResultError, match="is not a run result: it lacks logprob"):
        open_results(tmp_path / "other.zarr")
    newer = read_run(run_root / "exp")
    newer.attrs["visblind_result_schema"] = 99
    newer.to_zarr(tmp_path / "newer.zarr", consolidated=False)
    with pytest.raises(ResultError, match="run result schema version 99; this visblind reads up to 1"):
        open_results(tmp_path / "newer.zarr")
