"""The report's headline lines on hand-built analysis results with known answers."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probe.analysis.pipeline import Skipped
from probe.analysis.stats import BootstrapConfig
from probe.report.verdict import attention_lines, behaviour_lines, probe_lines, sinks_lines, verdict

CFG = BootstrapConfig(n_boot=200)


def _collapse(rel, low, high) -> xr.Dataset:
    dims = ("layer", "source")
    col = lambda v: np.array(v, dtype=float)[:, None]  # noqa: E731
    return xr.Dataset({"layer_rel_change": (dims, col(rel)), "layer_rel_sim_low": (dims, col(low)),
                       "layer_rel_sim_high": (dims, col(high))}, coords={"layer": [0, 1, 2], "source": ["last_prompt"]})


def test_attention_collapse_needs_the_whole_interval_below_threshold() -> None:
    line = attention_lines({"layers": _collapse([-0.5, -0.25, 0.1], [-0.6, -0.35, 0.05], [-0.4, -0.15, 0.15])})[0]
    assert "collapsed (≥20% drop, simultaneous CI) in layer(s) [0]" in line  # layer 1's band reaches -15%
    assert "rose in layer(s) [2]" in line
    none = attention_lines({"layers": _collapse([-0.1] * 3, [-0.15] * 3, [-0.05] * 3)})[0]
    assert "no layer dropped by ≥20%" in none
    assert "not measured" in attention_lines(Skipped("attention collapse: skipped, store lacks attn_share"))[0]


def _probes(before: float, after: float, control: float) -> xr.Dataset:
    acc = np.broadcast_to(np.array([before, after])[:, None, None, None], (2, 2, 1, 1)).copy()
    return xr.Dataset({"accuracy": (("store", "layer", "site", "label"), acc),
                       "control_accuracy": (("store", "layer", "site", "label"), np.full_like(acc, control)),
                       "chance": (("store", "layer", "site", "label"), np.full_like(acc, 0.25))},
                      coords={"store": ["before", "after"], "layer": [0, 1], "site": ["last_prompt"], "label": ["colour"]})


def test_probe_lines_tell_present_from_lost_against_the_control() -> None:
    assert "still decodable" in probe_lines(_probes(1.0, 0.7, 0.25))[0]  # kept 60% of 0.75 above the control
    assert "no longer decodable" in probe_lines(_probes(1.0, 0.5, 0.25))[0]  # kept 33%
    assert "no label is decodable" in probe_lines(_probes(0.3, 0.3, 0.25))[0]
    # high accuracy that the probe also reaches on shuffled labels is capacity, not information
    assert "no label is decodable" in probe_lines(_probes(0.9, 0.9, 0.85))[0]
    assert "exploratory" in probe_lines(_probes(1.0, 0.7, 0.25))[0]


def test_sinks_line_without_massive_dims() -> None:
    s = xr.Dataset(attrs={"sink_dims": [], "dense_dims": [7]})
    assert "does not apply" in sinks_lines(s)[0] and "dense outlier dims [7]" in sinks_lines(s)[0]
    s.attrs.update(sink_dims=[3])
    assert "dims [3] detected on the base store" in sinks_lines(s)[0]


def test_behaviour_lines_are_per_language_means_with_intervals() -> None:
    def ev(dep: list[bool]) -> xr.Dataset:
        n = len(dep)
        return xr.Dataset({"visually_dependent": ("example", dep)},
                          coords={"example": [f"e{i}" for i in range(n)], "example_lang": ("example", ["en", "ko"] * (n // 2)),
                                  "example_image_dependent": ("example", [True] * n), "lang": ["en", "ko"]})

    lines = behaviour_lines({"before": ev([True] * 8), "after": ev([True, False] * 4)}, CFG)
    assert lines[0].startswith("behaviour (en): visual dependence 100.0% [100.0–100.0] → 100.0%")
    assert lines[1].startswith("behaviour (ko): visual dependence 100.0% [100.0–100.0] → 0.0% [0.0–0.0]")
    full = verdict({"eval": {"before": ev([True] * 8), "after": ev([True] * 8)}}, CFG)
    assert len(full) == 2 + 5 and all("not measured" in x for x in full[2:3])
