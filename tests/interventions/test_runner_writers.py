"""One writer per run folder (issue 26), with real processes: a second runner is refused in one line before any
work and the first finishes as a single run would; SIGKILL at random moments then a rerun equals an uninterrupted
run; folders left by a kill or by the old runner resume or are refused in one line; a full disk is one line."""

from __future__ import annotations

import errno
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from interventions.runner import GridConfig, run_grid
from probe.results import RUN_VARIABLES, ResultError

ROOT = Path(__file__).resolve().parents[2]
GRID = dict(model="unused", donor="unused", batch_size=4, chunk_examples=2,
            interventions=[{"name": "knockout", "params": {"layers": [[0, 1]]}},
                           {"name": "swap", "params": {"components": [["projector"]]}}])


def _script(manifest: Path, out: Path, hold: Path | None = None) -> str:
    """A runner process over the tiny pair; with `hold`, it waits after its first chunk until `hold` disappears."""
    return textwrap.dedent(f"""
        import os, time, torch
        torch.set_num_threads(1)
        from probe.models import adapter_for
        from probe.testing.families import tiny_llava
        from interventions.runner import GridConfig, run_grid
        ads = tuple(adapter_for(*tiny_llava(seed=s, text_layers=3, text_dim=64, vision_dim=32)) for s in (0, 1))
        config = GridConfig(manifest={str(manifest)!r}, **{GRID!r})
        hold = {str(hold) if hold else None!r}
        def wait(i):
            if hold and i == 0:
                open(hold + ".started", "w").close()
                while os.path.exists(hold):
                    time.sleep(0.05)
        run_grid(config, {str(out)!r}, adapters=ads, progress=False, after_chunk=wait)
        print("finished")
    """)


def _start(script: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def fresh(pair, colour_manifest, tmp_path_factory):
    """The uninterrupted single run everything is compared with."""
    return run_grid(GridConfig(manifest=str(colour_manifest), **GRID), tmp_path_factory.mktemp("fresh") / "run",
                    adapters=pair, progress=False)


def _same(ds: xr.Dataset, fresh: xr.Dataset) -> None:
    for v in (*RUN_VARIABLES, "done"):
        np.testing.assert_array_equal(ds[v].values, fresh[v].values, err_msg=v)
    assert bool(ds["done"].all())


def test_second_runner_is_refused_and_the_first_finishes(pair, colour_manifest, tmp_path, fresh):
    out, hold = tmp_path / "run", tmp_path / "hold"
    hold.touch()
    first = _start(_script(colour_manifest, out, hold))
    try:
        deadline = time.time() + 300
        while not Path(str(hold) + ".started").exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the first runner never started"
            time.sleep(0.1)
        # a second process: refused in one line, before it loads anything
        second = _start(_script(colour_manifest, out))
        _, err = second.communicate(timeout=300)
        assert second.returncode != 0
        assert f"{out} is being written by another process" in err.decode()
        from typer.testing import CliRunner

        from interventions.cli import app

        grid = tmp_path / "grid.yaml"
        grid.write_text(f"model: {tmp_path / 'no-model'}\nmanifest: {colour_manifest}\n", encoding="utf-8")
        cli = CliRunner().invoke(app, ["run", str(grid), "--out", str(out), "--quiet"])
        # this grid differs from the running one: refused for that, in one line; the same grid is refused for the lock
        assert cli.exit_code == 2 and len(cli.output.strip().splitlines()) == 1, cli.output
        from probe.store.lock import StoreLockedError

        with pytest.raises(StoreLockedError, match="is being written by another process"):
            run_grid(GridConfig(manifest=str(colour_manifest), **GRID), out, adapters=pair, progress=False)
    finally:
        hold.unlink(missing_ok=True)
    out_text, err = first.communicate(timeout=600)
    assert first.returncode == 0 and b"finished" in out_text, err.decode()[-2000:]
    _same(xr.open_zarr(out / "results.zarr", consolidated=False).load(), fresh)


def test_sigkill_at_random_moments_then_rerun_equals_one_run(pair, colour_manifest, tmp_path, fresh):
    out = tmp_path / "run"
    rng = random.Random(26)
    for _ in range(3):
        proc = _start(_script(colour_manifest, out))
        time.sleep(rng.uniform(2.0, 12.0))  # imports, model building, creating the store, writing chunks
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _same(run_grid(GridConfig(manifest=str(colour_manifest), **GRID), out, adapters=pair, progress=False), fresh)


def test_folders_left_by_a_kill_or_the_old_runner(pair, colour_manifest, tmp_path, fresh):
    config = GridConfig(manifest=str(colour_manifest), **GRID)
    out = tmp_path / "run"
    stopped = []

    def stop(i):
        if i == 1:
            stopped.append(i)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(config, out, adapters=pair, progress=False, after_chunk=stop)
    # what two old runners left: a half-made results.zarr.partial beside results.zarr -> resumes
    (out / "results.zarr.partial").mkdir()
    (out / "results.zarr.partial" / "junk").write_text("x")
    _same(run_grid(config, out, adapters=pair, progress=False), fresh)
    assert not (out / "results.zarr.partial").exists()
    # a results.zarr without `done` (the old two-writer corruption) -> one line saying what to do, never a KeyError
    import shutil

    shutil.rmtree(out / "results.zarr" / "done")
    with pytest.raises(ResultError, match=r"is not a usable run \(.*lacks done\); delete it to start the run again"):
        run_grid(config, out, adapters=pair, progress=False)
    # a grid.json cut short by a kill, with results beside it -> one line
    (out / "grid.json").write_text('{"model": "unu')
    with pytest.raises(ValueError, match="grid.json is unreadable .*delete .* to start the run again"):
        run_grid(config, out, adapters=pair, progress=False)


def test_full_disk_is_one_line_and_resumes(tiny_llava_dir, colour_manifest, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from interventions.cli import app

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: {tiny_llava_dir}\nmanifest: {colour_manifest}\nchunk_examples: 2\n"
                    "interventions:\n  - {name: knockout, params: {layers: [[0]]}}\n", encoding="utf-8")
    real = xr.Dataset.to_zarr
    calls = []

    def full_after_two_chunks(self, *args, **kwargs):
        if kwargs.get("region") is not None:
            calls.append(1)
            if len(calls) > 4:  # two chunks (values + done marker each) fit, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_after_two_chunks)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(grid), "--out", str(out), "--quiet"])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]  # (model loading prints a bar)
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"no space left on the device writing {out}" in result.output and "run the same command again" in result.output
    assert int(xr.open_zarr(out / "results.zarr", consolidated=False)["done"].sum()) == 4
    monkeypatch.setattr(xr.Dataset, "to_zarr", real)
    again = CliRunner().invoke(app, ["run", str(grid), "--out", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    assert bool(xr.open_zarr(out / "results.zarr", consolidated=False)["done"].all())
