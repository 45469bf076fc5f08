"""The dashboard opens on the pair with a saved comparison, or on the only two stores under ROOT (issue 24)."""

from __future__ import annotations

import shutil
import time

import synthetic as S
from probe.analysis import AnalysisConfig, BootstrapConfig
from probe.report import compare

from apps.data import default_pair

CFG = AnalysisConfig(bootstrap=BootstrapConfig(n_boot=100))


def test_two_stores_open_as_earlier_created_before(tmp_path) -> None:
    S.write_store(tmp_path / "zeta.zarr", 12, seed=0)
    time.sleep(1.1)  # `created` has one-second resolution
    S.write_store(tmp_path / "alpha.zarr", 12, seed=1, visual_scale=0.5)
    assert default_pair(tmp_path, ["alpha.zarr", "zeta.zarr"]) == ("zeta.zarr", "alpha.zarr")  # not alphabetical
    S.write_store(tmp_path / "third.zarr", 12, seed=2)
    assert default_pair(tmp_path, ["alpha.zarr", "third.zarr", "zeta.zarr"]) == ("alpha.zarr", None)  # no plausible pair
    compare(tmp_path / "third.zarr", tmp_path / "alpha.zarr", tmp_path / "c.html", None, CFG, save_to=tmp_path / "alpha.zarr")
    assert default_pair(tmp_path, ["alpha.zarr", "third.zarr", "zeta.zarr"]) == ("third.zarr", "alpha.zarr")  # the saved one


def test_dashboard_opens_on_the_saved_pair_with_its_verdict(app, dash_root, tmp_path, monkeypatch) -> None:
    root = tmp_path / "root"
    shutil.copytree(dash_root, root)
    summary = compare(root / "before.zarr", root / "after.zarr", root / "c.html", None, CFG, save_to=root / "after.zarr")
    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(root))
    at = app()  # no query parameters
    at.run()
    assert not at.exception, at.exception
    picks = {s.key: s.value for s in at.sidebar.selectbox}
    assert picks["pick_before"] == "before.zarr" and picks["pick_after"] == "after.zarr"
    shown = [line[2:] for m in at.markdown for line in m.value.splitlines() if line.startswith("- ")]
    assert shown == summary["verdict"]
    assert not [b for b in at.button if b.key == "verdict_button"]
