"""SFT loop on a 4-example set with a micro LLaVA: learning, resume, freezing, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.models.registry import adapter_for
from probe.testing import tiny_llava
from train.sft import SFTConfig, StopTraining, sft
from train.sft.config import parse_freeze


def _adapter(seed: int = 0):
    model, processor = tiny_llava(seed, vision_layers=1, vision_dim=32, text_layers=2, text_dim=32, heads=2,
                                  kv_heads=1, vision_heads=2)
    return adapter_for(model, processor)


def _examples() -> list[Example]:
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20), "yellow": (230, 220, 30)}
    return [Example(f"e{i}", Image.new("RGB", (32, 32), rgb), "What color?", name)
            for i, (name, rgb) in enumerate(colours.items())]


def _params(adapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in adapter.model.named_parameters()}


CFG = dict(batch_size=4, device="cpu", log_every=1, threads=1)


def test_loss_decreases(tmp_path: Path) -> None:
    res = sft(_adapter(), _examples(), SFTConfig(lr=1e-2, max_steps=15, **CFG), tmp_path, progress=False)
    assert res.losses[-1] < 0.5 * res.losses[0]
    assert len((tmp_path / "loss.jsonl").read_text().splitlines()) == 15
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = SFTConfig(lr=5e-3, max_steps=6, checkpoint_every=3, **{**CFG, "batch_size": 2})
    full = _adapter()
    sft(full, _examples(), cfg, tmp_path / "a", progress=False)

    def kill(step: int, loss: float) -> None:
        if step == 4:  # after the step-3 checkpoint, mid-way to the next one
            raise StopTraining

    with pytest.raises(StopTraining):
        sft(_adapter(), _examples(), cfg, tmp_path / "b", callback=kill, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "step-3").is_dir()
    resumed = _adapter()  # a fresh process: the initial weights, then the checkpoint
    res = sft(resumed, _examples(), cfg, tmp_path / "b", progress=False)
    assert res.resumed_from == 3
    a, b = _params(full), _params(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert len((tmp_path / "b" / "loss.jsonl").read_text().splitlines()) == 6


def test_freezing_freezes(tmp_path: Path) -> None:
    adapter = _adapter()
    before = _params(adapter)
    sft(adapter, _examples(), SFTConfig(lr=1e-2, max_steps=3, freeze=("vision", "projector", "layer0"), **CFG),
        tmp_path, progress=False)
    after = _params(adapter)
    frozen = ("vision_tower", "multi_modal_projector", "language_model.layers.0.")
    for name in before:
        same = torch.equal(before[name], after[name])
        if any(f in name for f in frozen):
            assert same, f"{name} changed although frozen"
    assert not torch.equal(before["model.language_model.layers.1.mlp.up_proj.weight"],
                           after["model.language_model.layers.1.mlp.up_proj.weight"])


def test_lora_trains_adapter_only(tmp_path: Path) -> None:
    from probe.models.loading import load_model

    adapter = _adapter()
    adapter.model.save_pretrained(tmp_path / "base")
    adapter.processor.save_pretrained(tmp_path / "base")
    before = _params(adapter)
    sft(adapter, _examples(), SFTConfig(lr=1e-2, max_steps=3, lora_r=4, **CFG), tmp_path / "run", progress=False)
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
             for n, p in _params(adapter).items() if "lora_" not in n}
    for name, p in before.items():
        assert torch.equal(p, after[name]), f"{name} changed under LoRA"
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file()
    merged = load_model(tmp_path / "base", lora_adapter=final, attn_implementation="eager")
    delta = merged.model.model.language_model.layers[0].self_attn.q_proj.weight - before[
        "model.language_model.layers.0.self_attn.q_proj.weight"]
    assert delta.abs().max() > 0


def test_bad_freeze_is_named() -> None:
    with pytest.raises(ValueError, match="'visoin'"):
        parse_freeze("visoin,projector")


def test_existing_organism_is_found_only_when_finished_with_same_recipe(tmp_path):
    import json

    from train.organism import OrganismConfig, existing_organism

    cfg = OrganismConfig(stage1_steps=3, stage2_steps=2)
    assert existing_organism(tmp_path, seed=0, config=cfg) is None
    for name in ("base", "ko_ft"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    from dataclasses import asdict

    record = {"seed": 0, "seconds": {"stage1": 1.0}, "config": asdict(cfg), "manifests": {"eval_image": "data/e.jsonl"}}
    (tmp_path / "organism.json").write_text(json.dumps(record, default=str))
    found = existing_organism(tmp_path, seed=0, config=cfg)
    assert found is not None and found.manifests["eval_image"] == tmp_path / "data/e.jsonl"
    assert existing_organism(tmp_path, seed=1, config=cfg) is None
    assert existing_organism(tmp_path, seed=0, config=OrganismConfig(stage1_steps=4, stage2_steps=2)) is None
    (tmp_path / "ko_ft" / "config.json").unlink()
    assert existing_organism(tmp_path, seed=0, config=cfg) is None
