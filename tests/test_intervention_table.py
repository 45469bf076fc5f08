"""examples/intervention_table.py: the seed aggregation and the control checks, on hand-built known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probe.analysis.stats import BootstrapConfig

_PATH = Path(__file__).parent.parent / "examples" / "intervention_table.py"
_spec = importlib.util.spec_from_file_location("intervention_table", _PATH)
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)


def _seed(seed: int, ko: float, en: float, acc: float, effect: float) -> dict:
    row = {"recipient": "ko_ft", "condition": "none", "ko_vd_pct": [ko, ko - 1, ko + 1], "en_vd_pct": [en, 0, 0],
           "ko_text_acc": [acc, 0, 1]}
    cell = [effect, effect - 0.1, effect + 0.1]
    per_lang = {"effect": [[cell, cell, cell], [cell, cell, cell]], "projector": [2 * effect, 0, 0], "gap": 1.0 + seed}
    return {"seed": seed, "rows": [row], "patching": {"p": {"ko": per_lang, "en": per_lang}}}


def test_aggregate_rows_is_the_mean_of_the_seeds_points():
    rows = table.aggregate_rows([_seed(0, 10.0, 0.0, 0.5, 0.0), _seed(1, 40.0, 30.0, 0.25, 0.0),
                                 _seed(2, 100.0, 90.0, 0.75, 0.0)])
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["ko_vd_pct"] == {"per_seed": [10.0, 40.0, 100.0], "mean": 50.0}
    assert rows[0]["en_vd_pct"]["mean"] == 40.0 and rows[0]["ko_text_acc"]["mean"] == 0.5
    assert "50.0 (10.0 / 40.0 / 100.0)" in table.format_summary(rows)


def test_aggregate_rows_refuses_a_seed_missing_a_row():
    other = _seed(1, 1.0, 1.0, 1.0, 0.0)
    other["rows"][0]["condition"] = "boost"
    with pytest.raises(ValueError, match="missing"):
        table.aggregate_rows([_seed(0, 1.0, 1.0, 1.0, 0.0), other])


def test_aggregate_patching_mean_min_max_and_per_seed_cells():
    mean, per_seed = table.aggregate_patching([_seed(0, 0, 0, 0, 0.2), _seed(1, 0, 0, 0, 0.8)])
    cell = mean["p"]["ko"]
    np.testing.assert_allclose(cell["effect"][1][2], [0.5, 0.2, 0.8], atol=1e-12)
    np.testing.assert_allclose(cell["projector"], [1.0, 0.4, 1.6], atol=1e-12)
    assert cell["gap"] == 1.5
    # per-seed values in the figure's layout: row 0 the projector (visual column only), then one row per layer
    np.testing.assert_allclose(per_seed["p"]["en"][0][0], [0.4, 1.6], atol=1e-12)
    assert np.isnan(per_seed["p"]["en"][0][1]).all()
    np.testing.assert_allclose(per_seed["p"]["en"][2][1], [0.2, 0.8], atol=1e-12)


def _controls(knockout_vd: float, noop_logprob_shift: float) -> xr.Dataset:
    """none, knockout, one no-op over 4 images × {en, ko} image questions and 2 Korean text questions."""
    langs = ["en", "ko"] * 4 + ["ko", "ko"]
    dep = [True] * 8 + [False] * 2
    groups = [f"img{i // 2}" for i in range(8)] + ["t0", "t1"]
    vd = np.array([[1.0] * 8 + [np.nan] * 2, [knockout_vd] * 8 + [np.nan] * 2, [1.0] * 8 + [np.nan] * 2])
    logprob = np.zeros((3, 10))
    logprob[2] += noop_logprob_shift
    correct = np.ones((3, 10))
    return xr.Dataset(
        {"visually_dependent": (("condition", "example"), vd), "logprob": (("condition", "example"), logprob),
         "correct": (("condition", "example"), correct)},
        coords={"example_lang": ("example", langs), "example_image_dependent": ("example", dep),
                "example_group": ("example", groups)})


LABELS = ["knockout visual keys", "no-op: boost a=0"]
BOOT = BootstrapConfig(n_boot=200, seed=0)


def test_controls_pass_when_knockout_blinds_and_noop_is_exact():
    rows = table.check_controls(_controls(0.0, 0.0), LABELS, n_choices=4, boot=BOOT)
    assert [r["ko_vd"][0] for r in rows] == [1.0, 0.0, 1.0]
    assert rows[0]["ko_text_acc"][0] == 1.0


def test_controls_fail_loudly():
    with pytest.raises(table.ControlFailed, match="chance"):  # knockout left VD 0.5 > 1/16
        table.check_controls(_controls(0.5, 0.0), LABELS, n_choices=4, boot=BOOT)
    with pytest.raises(table.ControlFailed, match="no-op: boost a=0: logprob differs"):
        table.check_controls(_controls(0.0, 1e-7), LABELS, n_choices=4, boot=BOOT)
