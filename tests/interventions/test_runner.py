"""The experiment runner: known-answer conditions, resume after SIGKILL with nothing lost or repeated, config checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from interventions.runner import GridConfig, run_grid, summarise

VARS = ["logprob", "correct", "follows_mismatched", "visually_dependent"]


def _grid(manifest, **kw):
    base = dict(model="unused", donor="unused", manifest=str(manifest), seeds=(0, 1), batch_size=8, chunk_examples=2,
                interventions=[
                    {"name": "boost", "params": {"alpha": [0.0, 0.5], "layers": [1]}},
                    {"name": "swap", "params": {"components": [["all"], ["projector"]]}},
                    {"name": "contrastive", "params": {"alpha": [0.0], "beta": [0.2]}},
                    {"name": "image", "params": {"kind": ["blank"]}},
                    {"name": "visual_tokens", "params": {"mode": ["mean"], "seed": [0]}},
                    {"name": "knockout", "params": {"queries": [["last_prompt"]]}},
                ])
    base.update(kw)
    return GridConfig(**base)


def test_grid_known_answers(pair, colour_manifest, tmp_path):
    recipient, donor = pair
    config = _grid(colour_manifest, attention=True)
    ds = run_grid(config, tmp_path / "run", adapters=(recipient, donor), progress=False)
    labels = list(ds["condition"].values)
    assert labels[0] == "none" and len(labels) == 1 + 2 + 2 + 2 + 2 + 1 + 1  # contrastive and image take seeds
    # attention recorded under the edit: knocked-out queries put nothing on visual tokens; two-pass edits are NaN
    att = ds["visual_attention"]
    assert att.dims == ("condition", "example", "layer") and bool((att.sel(condition="none") > 0.01).all())
    np.testing.assert_allclose(att.sel(condition='knockout(queries=["last_prompt"])'), 0.0, atol=1e-6)
    assert bool(att.sel(condition='contrastive(alpha=0.0,beta=0.2,seed=0)').notnull().all())  # cut-off only: one pass
    assert bool(ds["done"].all())
    none = ds.sel(condition="none")
    # a no-op boost equals no intervention, bit for bit
    for v in VARS:
        np.testing.assert_array_equal(ds[v].sel(condition='boost(alpha=0.0,layers=1)'), none[v])
    # swapping every component of the recipient = the donor's own run
    donor_ds = run_grid(GridConfig(model="unused", manifest=str(colour_manifest), batch_size=8, chunk_examples=2),
                        tmp_path / "donor", adapters=(donor, None), progress=False)
    for v in VARS:
        np.testing.assert_array_equal(ds[v].sel(condition='swap(components=["all"])'), donor_ds[v].sel(condition="none"))
    assert not np.allclose(ds["logprob"].sel(condition='boost(alpha=0.5,layers=1)'), none["logprob"])
    assert (tmp_path / "run" / "grid.json").is_file()
    assert json.loads((tmp_path / "run" / "grid.json").read_text())["seeds"] == [0, 1]
    summary = summarise(ds, n_boot=50)
    assert summary["visual_dependence"].dims == ("condition", "lang")


def test_resume_after_sigkill(pair, colour_manifest, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from probe.models import adapter_for
        from probe.testing import tiny_llava
        from interventions.runner import GridConfig, run_grid
        ads = [adapter_for(*tiny_llava(seed=s, text_layers=3, text_dim=64, vision_dim=32)) for s in (0, 1)]
        config = GridConfig(model="unused", donor="unused", manifest={str(colour_manifest)!r}, batch_size=8, chunk_examples=2,
                            interventions=[{{"name": "knockout", "params": {{"layers": [[0, 1]]}}}}])
        def die(i):
            if i == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        run_grid(config, {str(tmp_path / "run")!r}, adapters=tuple(ads), progress=False, after_chunk=die)
    """)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin",
                                                                          "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    partial = xr.open_zarr(tmp_path / "run" / "results.zarr", consolidated=False).load()
    assert int(partial["done"].sum()) == 3 * 2  # three chunks of two examples were stored before the kill
    config = GridConfig(model="unused", donor="unused", manifest=str(colour_manifest), batch_size=8, chunk_examples=2,
                        interventions=[{"name": "knockout", "params": {"layers": [[0, 1]]}}])
    from probe.models import adapter_for
    from probe.testing import tiny_llava

    ran = []
    ads = tuple(adapter_for(*tiny_llava(seed=s, text_layers=3, text_dim=64, vision_dim=32)) for s in (0, 1))
    resumed = run_grid(config, tmp_path / "run", adapters=ads, progress=False, after_chunk=ran.append)
    fresh = run_grid(config, tmp_path / "fresh", adapters=ads, progress=False)
    n_chunks = int(np.ceil(resumed.sizes["example"] / 2)) * resumed.sizes["condition"]
    assert len(ran) == n_chunks - 3  # nothing stored is computed again
    for v in VARS + ["done"]:
        np.testing.assert_array_equal(resumed[v].values, fresh[v].values)


def test_bad_grids_say_what(colour_manifest, tmp_path, pair):
    with pytest.raises(KeyError, match="no intervention named 'bost'"):
        _grid(colour_manifest, interventions=[{"name": "bost", "params": {"alpha": [1]}}])
    with pytest.raises(ValueError, match="must list its values"):
        _grid(colour_manifest, interventions=[{"name": "boost", "params": {"alpha": 0.2}}])
    with pytest.raises(ValueError, match="needs a donor"):
        _grid(colour_manifest, donor=None)
    run_grid(GridConfig(model="unused", manifest=str(colour_manifest)), tmp_path / "r", adapters=(pair[0], None), progress=False)
    with pytest.raises(ValueError, match="another grid"):
        run_grid(GridConfig(model="unused", manifest=str(colour_manifest), seeds=(3,)), tmp_path / "r",
                 adapters=(pair[0], None), progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"id": "b1", "image": "missing.png", "prompt": "p", "answer": "red"}) + "\n")
    with pytest.raises(ValueError, match="'b1'.*missing.png"):
        run_grid(GridConfig(model="unused", manifest=str(broken)), tmp_path / "b", adapters=(pair[0], None), progress=False)
    assert not (tmp_path / "b").exists()
    bad = tmp_path / "g.yaml"
    bad.write_text("model: m\nmanifest: x\nintervention: []\n")
    with pytest.raises(ValueError, match="unknown grid field 'intervention'"):
        GridConfig.from_yaml(bad)


def test_cli_runs_a_grid_file(tiny_llava_dir, colour_manifest, tmp_path):
    from typer.testing import CliRunner

    from interventions.cli import app

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: {tiny_llava_dir}\nmanifest: {colour_manifest}\nmax_examples: 3\n"
                    "interventions:\n  - {name: knockout, params: {layers: [[0]]}}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(grid), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(tmp_path / "run" / "results.zarr", consolidated=False)
    assert list(ds["condition"].values) == ["none", "knockout(layers=[0])"] and bool(ds["done"].all())
    bad = CliRunner().invoke(app, ["run", str(grid), "--out", str(tmp_path / "run"), "--quiet"])
    assert bad.exit_code == 0  # same grid: resumes (nothing left to do)
    grid.write_text(f"model: {tiny_llava_dir}\nmanifest: {colour_manifest}\ninterventions:\n  - {{name: nope}}\n")
    bad = CliRunner().invoke(app, ["run", str(grid), "--out", str(tmp_path / "other"), "--quiet"])
    assert bad.exit_code == 2 and "no intervention named 'nope'" in bad.output
