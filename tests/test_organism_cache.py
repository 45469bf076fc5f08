"""The session's organism cache trains each (recipe, seed) once (the build itself is faked: no training here)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from train.organism import OrganismConfig, OrganismResult


def test_each_recipe_and_seed_is_built_once(organism_cache, monkeypatch):
    import train.organism

    builds: list[tuple[Path, int]] = []

    def fake_build(out, *, seed=0, config=None, progress=True):
        out = Path(out)
        builds.append((out, seed))
        for name in ("base", "ko_ft"):
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / "config.json").write_text("{}")
        record = {"seed": seed, "seconds": {"stage1": 0.0}, "config": asdict(config), "manifests": {}}
        (out / "organism.json").write_text(json.dumps(record, default=str))
        return OrganismResult(out / "base", out / "ko_ft", {}, {"stage1": 0.0})

    monkeypatch.setattr(train.organism, "build_organism", fake_build)
    cfg = OrganismConfig(stage1_steps=7, stage2_steps=3)  # a recipe no real test uses
    first = organism_cache(5, cfg)
    again = organism_cache(5, OrganismConfig(stage1_steps=7, stage2_steps=3))
    assert again.base == first.base and len(builds) == 1
    other_seed = organism_cache(6, cfg)
    other_recipe = organism_cache(5, OrganismConfig(stage1_steps=8, stage2_steps=3))
    assert len(builds) == 3 and len({first.base, other_seed.base, other_recipe.base}) == 3
