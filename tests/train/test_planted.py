"""Planted-cause recipes: only the planted component moves (bit for bit), recipes round-trip as YAML."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from probe.models.loading import load_model
from probe.models.swap import parameters_of
from train.planted import CAUSES, PlantedConfig, PlantedData, load_config, planted_recipes, save_config, train_planted


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from probe.testing.families import tiny_llava

    root = tmp_path_factory.mktemp("planted")
    model, processor = tiny_llava(0, text_layers=2, text_dim=32, heads=2, kv_heads=1, vision_layers=1, vision_dim=32,
                                  vision_heads=2)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    rows = []
    for i, (name, rgb) in enumerate({"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}.items()):
        Image.new("RGB", (32, 32), rgb).save(root / f"{i}.png")
        rows.append({"id": f"e{i}", "image": f"{i}.png", "prompt": "What color?", "answer": name, "lang": "en",
                     "question_type": "colour", "image_dependent": True})
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.mark.parametrize("cause", ["projector", "attention", "decoder"])
def test_only_the_planted_component_moves(micro, tmp_path, cause) -> None:
    data = PlantedData(model=str(micro / "base"), shortcut=str(micro / "m.jsonl"), fresh=str(micro / "m.jsonl"))
    cfg = planted_recipes(data, steps=3, lr=1e-2, batch_size=2, threads=1)[cause]
    cfg = PlantedConfig(**{**cfg.__dict__, "holdout": 0})
    out = train_planted(cfg, tmp_path, progress=False)
    base, variant = load_model(micro / "base"), load_model(out)
    free = set(parameters_of(variant, cfg.trains))
    after = dict(variant.base_model.named_parameters())
    moved = {q for q, p in base.base_model.named_parameters() if not torch.equal(p, after[q])}
    assert moved and moved <= free  # something planted moved, nothing else did
    assert load_config(tmp_path / "planted.yaml") == cfg


def test_recipes_share_one_budget_and_bad_values_are_refused(micro, tmp_path) -> None:
    data = PlantedData(model=str(micro / "base"), shortcut=str(micro / "m.jsonl"), fresh=str(micro / "m.jsonl"))
    every = planted_recipes(data, steps=7, seed=3)
    assert tuple(every) == CAUSES and {(c.max_steps, c.lr, c.seed) for c in every.values()} == {(7, 1e-3, 3)}
    assert every["decoder"].images == "blank" and every["null"].holdout == 0
    assert load_config(save_config(every["attention"], tmp_path / "r.yaml")) == every["attention"]
    with pytest.raises(ValueError, match="images"):
        PlantedConfig(name="x", model="m", train_manifest="t", trains=("projector",), images="none")
    (tmp_path / "bad.yaml").write_text("name: x\nmodel: m\ntrain_manifest: t\ntrains: [projector]\nstepz: 3\n")
    with pytest.raises(ValueError, match="unknown recipe key 'stepz'"):
        load_config(tmp_path / "bad.yaml")
