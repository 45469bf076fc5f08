"""`train sft` and `train mitigate` as real processes: a second writer of the output folder is refused in one line
while the first finishes as a single run would, and SIGKILL at random moments then a rerun equals an
uninterrupted run (weights bit for bit, the step log row for row)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
STEPS = 16


@pytest.fixture(scope="module")
def answered(make_colour_manifest, tmp_path_factory) -> Path:
    path = make_colour_manifest(tmp_path_factory.mktemp("proc_data"), 12)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    out = path.with_name("train.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["answer"]), encoding="utf-8")
    return out


def _last_step(log: Path) -> int:
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def _rows(log: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in log.read_text().splitlines()]


def _weights(final: Path) -> dict:
    return {f.name + ":" + k: v for f in sorted(final.glob("*.safetensors")) for k, v in load_file(f).items()}


def _assert_same_run(a: Path, b: Path, final: str, log: str) -> None:
    wa, wb = _weights(a / final), _weights(b / final)
    assert wa and set(wa) == set(wb)
    for name in wa:
        assert (wa[name] == wb[name]).all(), name
    assert _rows(a / log) == _rows(b / log)


def _kill_twice_then_finish(cmd: list[str], out: Path, log: Path, seed: int) -> list[int]:
    """Two runs killed with SIGKILL at random steps (and a random moment inside the step), then one to the end."""
    rng = random.Random(seed)
    first = rng.randint(2, STEPS // 2 - 1)
    targets = [first, rng.randint(first + 2, STEPS - 5)]  # room before the end: a loaded machine polls late
    killed_at = []
    for target in targets:
        proc = subprocess.Popen(cmd + ["--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while _last_step(log) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.01))  # a random moment inside the step
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_last_step(log))
    subprocess.run(cmd + ["--out", str(out)], env=ENV, check=True, capture_output=True, timeout=600)
    return killed_at


def _second_writer_refused(cmd: list[str], out: Path, log: Path) -> subprocess.CompletedProcess:
    """A second run into `out` while the first is mid-training (paused with SIGSTOP so the overlap is certain)."""
    first = subprocess.Popen(cmd + ["--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while _last_step(log) < 1 and first.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)
    try:
        assert _last_step(log) < STEPS, "the first run finished before the second started"
        second = subprocess.run(cmd + ["--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    return second


def test_train_sft_two_writers_and_sigkill(tmp_path, tiny_llava_dir, answered):
    config = tmp_path / "sft.yaml"
    config.write_text(f"lr: 0.005\nbatch_size: 2\nmax_steps: {STEPS}\ncheckpoint_every: 2\nlora_r: 4\n"
                      "lora_dropout: 0.3\nlog_every: 1\nthreads: 1\ndevice: cpu\n")
    cmd = [sys.executable, "-m", "train.cli", "sft", str(tiny_llava_dir), str(answered), "--config", str(config)]
    whole = tmp_path / "whole"
    subprocess.run(cmd + ["--out", str(whole)], env=ENV, check=True, capture_output=True, timeout=600)

    second = _second_writer_refused(cmd, tmp_path / "two", tmp_path / "two" / "loss.jsonl")
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"{tmp_path / 'two'} is being written by another process (train sft)" in lines[0]
    _assert_same_run(whole, tmp_path / "two", "final", "loss.jsonl")

    killed = tmp_path / "killed"
    at = _kill_twice_then_finish(cmd, killed, killed / "loss.jsonl", seed=0)
    assert all(0 < s < STEPS for s in at), f"kills landed at steps {at}; the test needs mid-run kills"
    _assert_same_run(whole, killed, "final", "loss.jsonl")


def test_train_mitigate_two_writers_and_sigkill(tmp_path, tiny_llava_dir, answered):
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(f"name: plain\nmodel: {tiny_llava_dir}\ntrain_manifest: {answered}\nbatch_size: 2\n"
                      f"max_steps: {STEPS}\nlora_r: 4\ncheckpoint_every: 2\nthreads: 1\ndevice: cpu\n")
    cmd = [sys.executable, "-m", "train.cli", "mitigate", str(recipe)]
    whole = tmp_path / "whole"
    subprocess.run(cmd + ["--out", str(whole)], env=ENV, check=True, capture_output=True, timeout=600)

    second = _second_writer_refused(cmd, tmp_path / "two", tmp_path / "two" / "main" / "steps.jsonl")
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"{tmp_path / 'two'} is being written by another process (train mitigate)" in lines[0]
    _assert_same_run(whole, tmp_path / "two", "main/final", "main/steps.jsonl")

    killed = tmp_path / "killed"
    at = _kill_twice_then_finish(cmd, killed, killed / "main" / "steps.jsonl", seed=1)
    assert all(0 < s < STEPS for s in at), f"kills landed at steps {at}; the test needs mid-run kills"
    _assert_same_run(whole, killed, "main/final", "main/steps.jsonl")
