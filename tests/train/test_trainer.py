"""The one training loop (train.trainer): resume with dropout is bit-identical, changed settings are refused,
a cut log line does not block resume, the final model appears only once complete, pickles are refused."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.models.registry import adapter_for
from probe.testing import tiny_llava
from train.sft import SFTConfig, StopTraining, sft
from train.sft.state import load_state, save_state
from train.trainer import rng_state, set_rng_state

CFG = dict(lr=5e-3, max_steps=6, checkpoint_every=3, batch_size=2, device="cpu", threads=1, log_every=1)


def _adapter():
    model, processor = tiny_llava(0, vision_layers=1, vision_dim=32, text_layers=2, text_dim=32, heads=2,
                                  kv_heads=1, vision_heads=2)
    return adapter_for(model, processor)


def _examples() -> list[Example]:
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 220, 30)}
    return [Example(f"e{i}", Image.new("RGB", (32, 32), rgb), "What color?", name)
            for i, (name, rgb) in enumerate(colours.items())]


def _kill_at(step_to_kill: int):
    def kill(step: int, _loss: float) -> None:
        if step == step_to_kill:
            raise StopTraining
    return kill


def _weights(adapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in adapter.model.named_parameters()}


def _rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (folder / "loss.jsonl").read_text().splitlines()]


def test_resume_with_dropout_is_bit_identical(tmp_path):
    """LoRA dropout draws from torch's generator every step: the checkpoint must carry the generator's state."""
    cfg = SFTConfig(lora_r=4, lora_dropout=0.5, **CFG)
    full = _adapter()
    sft(full, _examples(), cfg, tmp_path / "a", progress=False)
    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path / "b", callback=_kill_at(5), progress=False)
    resumed = _adapter()
    torch.manual_seed(1234)  # whatever the new process's generator holds, the checkpoint's state wins
    assert sft(resumed, _examples(), cfg, tmp_path / "b", progress=False).resumed_from == 3
    a, b = _weights(full), _weights(resumed)
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_rng_state_round_trips_every_generator(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_state(rng_state(), tmp_path, stem="rng")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_state(tmp_path, stem="rng"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


@pytest.mark.parametrize("change, key", [
    ({"lr": 1e-3}, "lr"), ({"batch_size": 4}, "batch_size"), ({"seed": 1}, "seed"), ({"lora_r": 2}, "lora_r"),
])
def test_resume_refuses_changed_settings_in_one_line(tmp_path, change, key):
    cfg = SFTConfig(lora_r=4, **CFG)
    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path, callback=_kill_at(4), progress=False)
    other = SFTConfig(**{**CFG, "lora_r": 4, **change})
    with pytest.raises(ValueError) as err:
        sft(_adapter(), _examples(), other, tmp_path, progress=False)
    msg = str(err.value)
    assert f"was trained with {key}=" in msg and "step-3" in msg and "--no-resume" in msg and "\n" not in msg, msg
    assert not (tmp_path / "final").exists()


def test_resume_refuses_other_examples_and_allows_a_longer_run(tmp_path):
    cfg = SFTConfig(**CFG)
    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path, callback=_kill_at(4), progress=False)
    with pytest.raises(ValueError, match="was trained with examples="):
        sft(_adapter(), _examples()[:3], cfg, tmp_path, progress=False)
    longer = SFTConfig(**{**CFG, "max_steps": 8, "checkpoint_every": 2})  # how long and how often: not the result
    assert sft(_adapter(), _examples(), longer, tmp_path, progress=False).resumed_from == 3


def test_a_log_line_cut_by_a_kill_does_not_block_resume(tmp_path):
    cfg = SFTConfig(**CFG)
    sft(_adapter(), _examples(), cfg, tmp_path / "a", progress=False)
    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path / "b", callback=_kill_at(5), progress=False)
    with (tmp_path / "b" / "loss.jsonl").open("a") as log:
        log.write('{"step": 6, "loss": 1.2')  # killed mid-write
    assert sft(_adapter(), _examples(), cfg, tmp_path / "b", progress=False).resumed_from == 3
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")


def test_damaged_trainer_state_is_named_in_one_line(tmp_path):
    cfg = SFTConfig(**CFG)
    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path, callback=_kill_at(4), progress=False)
    state = tmp_path / "checkpoints" / "step-3" / "trainer_state.json"
    state.write_text(state.read_text()[:50])
    with pytest.raises(ValueError) as err:
        sft(_adapter(), _examples(), cfg, tmp_path, progress=False)
    assert str(err.value).startswith(f"{state}:1: damaged trainer state") and "\n" not in str(err.value)


def test_final_model_appears_only_once_complete(tmp_path, monkeypatch):
    import train.sft.loop as loop

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(loop, "save_processor", broken)
    with pytest.raises(OSError, match="disk full"):
        sft(_adapter(), _examples(), SFTConfig(**{**CFG, "max_steps": 2}), tmp_path, progress=False)
    assert not (tmp_path / "final").exists()


def test_mitigation_checkpoints_refuse_a_pickle(tmp_path, tiny_llava_dir, make_colour_manifest):
    from train.mitigate import MitigateConfig, mitigate

    manifest = make_colour_manifest(tmp_path / "data", 8)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows if r["answer"]))
    crafted = tmp_path / "run" / "main" / "checkpoints" / "step-1"
    crafted.mkdir(parents=True)
    (crafted / "trainer_state.pt").write_bytes(pickle.dumps({"step": 1}))
    cfg = MitigateConfig(name="plain", model=str(tiny_llava_dir), train_manifest=str(manifest), batch_size=2,
                         max_steps=2, lora_r=2, threads=1, device="cpu")
    with pytest.raises(ValueError, match="step-1 holds a pickled trainer_state.pt, which is never loaded"):
        mitigate(cfg, tmp_path / "run", progress=False)
