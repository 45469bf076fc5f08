"""Fixtures: a ROOT folder with a before/after store pair, its images, a manifest (the interventions view is tested on a real run: test_interventions_view.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import synthetic as S  # noqa: E402

N = 60


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs the app as `__main__` and leaves it there; a later test whose multiprocessing
    spawns workers (the dask LocalCluster test) would then re-run the dashboard script in each child."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def dash_root(tmp_path_factory) -> Path:
    """ROOT with before.zarr (visual share as drawn) and after.zarr (visual share × 0.3), LLaVA anyres layout."""
    root = tmp_path_factory.mktemp("dash_root")
    S.write_store(root / "before.zarr", N, "llava_anyres", seed=0, visual_scale=1.0)
    S.write_store(root / "after.zarr", N, "llava_anyres", seed=1, visual_scale=0.3)
    size = tuple(int(x) for x in S.layout("llava_anyres")["image_size"])
    S.write_image(root / "data" / "img" / "quad.png", size)
    with (root / "data" / "manifest.jsonl").open("w") as fh:
        for i in range(N):
            fh.write(json.dumps({"id": f"ex{i}", "image": "img/quad.png", "prompt": "What colour?", "answer": "red"}) + "\n")
    return root


@pytest.fixture
def app(dash_root, monkeypatch):
    """A fresh AppTest of the dashboard script over ``dash_root``."""
    from streamlit.testing.v1 import AppTest

    from apps.launch import APP_FILE

    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(dash_root))

    def make(**params: str) -> AppTest:
        at = AppTest.from_file(str(APP_FILE), default_timeout=120)
        for k, v in params.items():
            at.query_params[k] = v
        return at

    return make
