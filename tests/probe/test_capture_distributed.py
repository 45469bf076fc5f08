"""Data-parallel capture: two gloo CPU processes under torchrun / accelerate launch end in the store one process writes.

Oracle: a one-process capture of the same manifest and spec (with --skip-bad on a manifest holding a
corrupt image and a bad line, the one-process --skip-bad capture). Every batch holds the same examples
as in the one-process run (shares are whole batches of the good examples), so padding and float
rounding are the same and the stores must be identical (exact for ints, strings and floats alike).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probe.capture import CaptureSpec
from probe.capture.distributed import World, shard_folder, shares
from probe.capture.run import capture_local
from probe.store import TraceStore

N = 12
SPEC = CaptureSpec(batch_size=2, resid=("pooled",), keys=True, vocab=True)


@pytest.fixture(scope="module")
def case(tiny_llava_dir, make_colour_manifest, tmp_path_factory):
    """(manifest, spec file, one-process store)."""
    root = tmp_path_factory.mktemp("dp")
    manifest = make_colour_manifest(root / "data", N)
    spec = root / "spec.json"
    spec.write_text(SPEC.to_json())
    one = capture_local(str(tiny_llava_dir), manifest, root / "one.zarr", SPEC, progress=False, examples_per_chunk=2)
    return manifest, spec, one


def _torchrun(model: Path, manifest: Path, spec: Path, out: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
            "-m", "probe.cli", "capture", str(model), str(manifest), "--spec", str(spec), "--out", str(out),
            "--chunk", "2", *extra]


@pytest.fixture(scope="module")
def bad_case(tiny_llava_dir, make_colour_manifest, tmp_path_factory):
    """(manifest with a corrupt image at ex005 and a bad line after ex008, spec file, one-process --skip-bad store).

    With batch size 2 the bad image shifts every later batch by one example, so equality needs the
    data-parallel run to cut its batches from the good examples only, as one process does.
    """
    root = tmp_path_factory.mktemp("dp_bad")
    manifest = make_colour_manifest(root / "data", N)
    (root / "data" / "5.png").write_bytes(b"not a png")
    lines = manifest.read_text(encoding="utf-8").splitlines()
    lines.insert(9, '{"id": "broken", "image": ')
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = root / "spec.json"
    spec.write_text(SPEC.to_json())
    one = capture_local(str(tiny_llava_dir), manifest, root / "one.zarr", SPEC, skip_bad=True, progress=False,
                        examples_per_chunk=2)
    return manifest, spec, one


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _assert_same(a: TraceStore, b: TraceStore, n: int = N) -> None:
    assert a.example_ids == b.example_ids and len(a.example_ids) == n
    assert a.skipped == b.skipped
    xr.testing.assert_identical(a.dataset.drop_attrs(), b.dataset.drop_attrs())
    assert a.layout.to_json() == b.layout.to_json()  # (fill NaN != NaN in the dataclass ==)
    assert a.read_group("vocab").equals(b.read_group("vocab"))
    for key in ("weights_hash", "adapter", "capture_spec", "manifest", "schema_version"):
        assert a.attrs[key] == b.attrs[key], key


def test_shares_are_whole_batches_round_robin():
    assert shares(list("abcdefg"), 2, 2) == [list("abef"), list("cdg")]
    assert shares(list("ab"), 2, 3) == [list("ab"), [], []]
    with pytest.raises(ValueError, match="RANK 2"):
        World(rank=2, size=2)


def test_torchrun_two_processes_equal_one(case, tiny_llava_dir, tmp_path):
    manifest, spec, one = case
    out = tmp_path / "dp.zarr"
    run = subprocess.run(_torchrun(tiny_llava_dir, manifest, spec, out, 29511), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same(TraceStore.open(out), one)
    assert not shard_folder(out).exists()  # merged, then dropped


def test_accelerate_launch_two_processes_equal_one(case, tiny_llava_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (torchrun underneath, CPU, gloo) ends in the one-process store.

    (`accelerate launch --cpu --num_processes 2` would start one process without mpirun: see probe.capture.distributed.)
    """
    pytest.importorskip("accelerate")
    manifest, spec, one = case
    out = tmp_path / "acc.zarr"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29514",
           "-m", "probe.cli", "capture", str(tiny_llava_dir), str(manifest), "--spec", str(spec), "--out", str(out),
           "--chunk", "2"]
    # a private HF_HOME: no user accelerate config file can change the launch
    env = {**_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wrote 12 examples" in run.stdout and run.stdout.count("wrote") == 1  # rank 0 alone reports
    _assert_same(TraceStore.open(out), one)
    assert not shard_folder(out).exists()


def test_torchrun_skip_bad_equals_one_process_skip_bad(bad_case, tiny_llava_dir, tmp_path):
    """--skip-bad: same examples, order, values and skip records as one process; without it, the same first error."""
    manifest, spec, one = bad_case
    assert len(one.example_ids) == N - 1 and [d["example"] for d in one.skipped] == [f"{manifest}:10", "ex005"]
    out = tmp_path / "dp.zarr"
    run = subprocess.run(_torchrun(tiny_llava_dir, manifest, spec, out, 29515, "--skip-bad"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same(TraceStore.open(out), one, N - 1)
    assert not shard_folder(out).exists()


def test_bad_example_without_skip_bad_stops_every_rank(bad_case, tiny_llava_dir, tmp_path):
    """Without --skip-bad the ranks stop at the first bad example, with one process's message, before capturing."""
    from probe.data.manifest import read_manifest_skipping

    manifest, spec, _ = bad_case
    shutil.copytree(manifest.parent, tmp_path / "data")
    m = tmp_path / "data" / "no_bad_line.jsonl"
    m.write_text("".join(line + "\n" for line in manifest.read_text(encoding="utf-8").splitlines() if "broken" not in line),
                 encoding="utf-8")
    assert len(read_manifest_skipping(m)[0]) == N and not read_manifest_skipping(m)[1]
    out = tmp_path / "dp.zarr"
    run = subprocess.run(_torchrun(tiny_llava_dir, m, spec, out, 29516), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "example 'ex005': corrupt image" in run.stderr
    assert not shard_folder(out).exists() and not TraceStore.exists(out)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (a child of the launcher)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def _committed(path: Path) -> int:
    return TraceStore.open(path).n_examples if TraceStore.exists(path) else 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's pid through /proc")
def test_rank_killed_mid_run_then_rerun_equals_one(case, tiny_llava_dir, tmp_path):
    """SIGKILL rank 1 after its shard committed one batch; the same command again ends in the one-process store."""
    manifest, spec, one = case
    out = tmp_path / "dp.zarr"
    cmd = _torchrun(tiny_llava_dir, manifest, spec, out, 29512)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = shard_folder(out) / "w2r1.zarr"
    deadline = time.time() + 240
    while _committed(shard) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    pid = _rank_pid(proc.pid, 1)
    at_kill = _committed(shard)
    assert pid is not None and proc.poll() is None, "rank 1 ended before it could be killed"
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert 0 < at_kill < N // 2, f"kill landed at {at_kill} of rank 1's {N // 2} examples; the test needs a mid-run kill"
    assert not TraceStore.exists(out)
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same(TraceStore.open(out), one)


def _interrupted(append, at: int):
    """TraceStoreWriter.append that raises KeyboardInterrupt on its `at`-th call (counted over every writer)."""
    calls = []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return append(self, *a, **k)

    return failing


def test_merge_interrupted_midway_resumes(case, tiny_llava_dir, tmp_path, monkeypatch):
    """A merge that stops after its first append restarts from what OUT holds and ends equal to one process."""
    from probe.capture import distributed
    from probe.store import TraceStoreWriter

    manifest, _, one = case
    out = tmp_path / "m.zarr"
    from probe.data.manifest import read_manifest

    examples = read_manifest(manifest)
    for r, part in enumerate(shares(examples, SPEC.batch_size, 2)):
        capture_local(str(tiny_llava_dir), part, shard_folder(out) / f"w2r{r}.zarr", SPEC, progress=False,
                      examples_per_chunk=2)
    real = TraceStoreWriter.append
    monkeypatch.setattr(TraceStoreWriter, "append", _interrupted(real, 2))
    with pytest.raises(KeyboardInterrupt):
        distributed.merge_shards(out, [ex.id for ex in examples], manifest=str(manifest), progress=False)
    monkeypatch.setattr(TraceStoreWriter, "append", real)
    assert 0 < TraceStore.open(out).n_examples < N
    merged = distributed.merge_shards(out, [ex.id for ex in examples], manifest=str(manifest), progress=False)
    _assert_same(merged, one)


def test_device_map_reaches_from_pretrained(tiny_llava_dir, monkeypatch):
    """`load_model(device_map=...)` hands it to from_pretrained (a model larger than one device)."""
    from transformers import AutoModelForImageTextToText

    from probe.models.loading import load_model

    seen = {}
    real = AutoModelForImageTextToText.from_pretrained

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", spy)
    adapter = load_model(tiny_llava_dir, device_map="cpu")
    assert seen["device_map"] == "cpu"
    assert {p.device.type for p in adapter.model.parameters()} == {"cpu"}
    assert np.isfinite(next(adapter.model.parameters()).detach().numpy()).all()


def test_shard_interrupted_mid_chunk_resumes_whole_batches(case, tiny_llava_dir, tmp_path, monkeypatch):
    """--chunk 3 with batches of 2: a shard stopped after its first commit holds whole batches (its chunk is
    rounded up to 4), so the rerun captures no batch in part and ends equal to one process with --chunk 3.

    In this process, as the one rank of a world of one (gloo), so the interruption lands deterministically.
    """
    import socket

    import torch.distributed as dist

    from probe.capture.distributed import data_parallel_capture
    from probe.store import TraceStoreWriter

    manifest, _, _ = case
    one = capture_local(str(tiny_llava_dir), manifest, tmp_path / "one.zarr", SPEC, progress=False,
                        examples_per_chunk=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "dp.zarr"
    real = TraceStoreWriter.append
    try:
        monkeypatch.setattr(TraceStoreWriter, "append", _interrupted(real, 3))
        with pytest.raises(KeyboardInterrupt):
            data_parallel_capture(str(tiny_llava_dir), manifest, out, SPEC, progress=False, examples_per_chunk=3)
        monkeypatch.setattr(TraceStoreWriter, "append", real)
        assert _committed(shard_folder(out) / "w1r0.zarr") == 4  # two whole batches
        merged = data_parallel_capture(str(tiny_llava_dir), manifest, out, SPEC, progress=False, examples_per_chunk=3)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    _assert_same(merged, one)
