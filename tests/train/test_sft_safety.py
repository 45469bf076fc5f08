"""Resuming never unpickles; a pickled LoRA adapter is refused unless --allow-pickle."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.models.registry import adapter_for
from probe.testing import tiny_llava
from train.sft import SFTConfig, StopTraining, sft
from train.sft.state import load_state, restore_trainable, save_state, save_trainable

MARKER = Path("/tmp/visblind-pickle-payload-ran")


class _Payload:
    def __reduce__(self):
        return (MARKER.write_text, ("ran",))


def _adapter():
    model, processor = tiny_llava(0, vision_layers=1, vision_dim=32, text_layers=1, text_dim=32, heads=2,
                                  kv_heads=1, vision_heads=2)
    return adapter_for(model, processor)


def _examples() -> list[Example]:
    return [Example(f"e{i}", Image.new("RGB", (32, 32), rgb), "What color?", name)
            for i, (name, rgb) in enumerate({"red": (220, 20, 20), "blue": (20, 20, 220)}.items())]


def test_state_round_trips_keys_tuples_and_tensors(tmp_path):
    state = {"step": 3, "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
                                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "fused": None, "params": [0]}]},
             "scheduler": {"lr_lambdas": [None], "_last_lr": [1e-3]}}
    save_state(state, tmp_path)
    back = load_state(tmp_path)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # tuples and None intact
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay ints (optimizer matches params by them)
    for k, v in state["optimizer"]["state"][0].items():
        torch.testing.assert_close(back["optimizer"]["state"][0][k], v, rtol=0, atol=0)
    assert back["scheduler"] == state["scheduler"]


def test_restore_trainable_copies_exactly_the_saved_names(tmp_path):
    saved = {"a.weight": torch.nn.Parameter(torch.arange(6.0).reshape(2, 3)), "b": torch.nn.Parameter(torch.tensor([7.0]))}
    save_trainable(saved, tmp_path)
    fresh = {n: torch.nn.Parameter(torch.zeros_like(p)) for n, p in saved.items()}
    restore_trainable(fresh, tmp_path)
    for n in saved:
        assert torch.equal(fresh[n], saved[n])
    with pytest.raises(ValueError, match=r"missing \['c'\]"):  # a run that trains more than was saved
        restore_trainable({**fresh, "c": torch.nn.Parameter(torch.zeros(1))}, tmp_path)
    with pytest.raises(ValueError, match=r"unexpected \['b'\]"):  # a run that trains less (another freeze)
        restore_trainable({"a.weight": fresh["a.weight"]}, tmp_path)


def test_resume_never_unpickles_a_crafted_checkpoint(tmp_path):
    MARKER.unlink(missing_ok=True)
    cfg = SFTConfig(lr=1e-3, max_steps=4, checkpoint_every=2, batch_size=2, device="cpu", threads=1)

    def stop(step: int, loss: float) -> None:
        if step == 3:
            raise StopTraining

    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path, callback=stop, progress=False)
    ckpt = tmp_path / "checkpoints" / "step-2"
    assert not list(ckpt.glob("*.pt"))  # the trainer state is data: JSON + safetensors
    crafted = tmp_path / "checkpoints" / "step-3"  # a complete checkpoint plus a pickle payload
    shutil.copytree(ckpt, crafted)
    (crafted / "trainer_state.pt").write_bytes(pickle.dumps(_Payload()))
    assert sft(_adapter(), _examples(), cfg, tmp_path, progress=False).resumed_from == 2
    assert not MARKER.exists()
    for name in ("trainer_state.json", "trainer_state.safetensors"):  # only the pickle left: refused in one line
        (crafted / name).unlink()
    with pytest.raises(ValueError, match="step-3 holds a pickled trainer_state.pt, which is never loaded"):
        sft(_adapter(), _examples(), cfg, tmp_path, progress=False)
    assert not MARKER.exists()


def test_pickled_lora_adapter_refused_unless_allowed(tiny_llava_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from probe.models.loading import load_model

    model, _ = tiny_llava(seed=0, text_layers=3, text_dim=64, vision_dim=32)  # the saved tiny_llava_dir model
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.q_proj", init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(tmp_path / "safe")
    peft_model.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert (tmp_path / "pickled" / "adapter_model.bin").is_file()
    with pytest.raises(ValueError, match="LoRA weights are pickled .* --allow-pickle"):
        load_model(tiny_llava_dir, lora_adapter=tmp_path / "pickled")
    allowed = load_model(tiny_llava_dir, lora_adapter=tmp_path / "pickled", allow_pickle=True)
    safe = load_model(tiny_llava_dir, lora_adapter=tmp_path / "safe")
    for (name, a), (_, b) in zip(allowed.model.named_parameters(), safe.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_cli_refuses_pickled_adapter_in_one_line(tiny_llava_dir, tmp_path):
    from typer.testing import CliRunner

    from probe.cli import app

    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    (tmp_path / "lora" / "adapter_model.bin").write_bytes(b"x")
    result = CliRunner().invoke(app, ["capture", str(tiny_llava_dir), "m.jsonl", "--out", str(tmp_path / "s"),
                                      "--adapter", str(tmp_path / "lora")])
    assert result.exit_code == 2
    assert "adapter_model.bin" in result.stderr and "--allow-pickle" in result.stderr
