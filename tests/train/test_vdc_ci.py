"""CI run of the VDC table on a micro organism (one seed, plain LoRA and VDC), and the grouped bootstrap's oracle."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from probe.analysis.stats import BootstrapConfig
from probe.data.synth import SynthConfig
from train.mitigate.recipes import RecipeData, recipes
import xarray as xr

from train.mitigate.table import choose_budget, grouped_ratio, pool_seeds, recipe_rows
from train.organism import OrganismConfig

EXAMPLE = Path(__file__).parents[2] / "examples" / "vdc_table.py"


def test_grouped_ratio_resamples_images_not_questions() -> None:
    one = grouped_ratio(np.array([1.0, 0.0]), np.array([1.0, 1.0]), ["a", "a"], BootstrapConfig(n_boot=200))
    assert one == pytest.approx((0.5, 0.5, 0.5), abs=1e-12)  # one image: nothing to resample
    # two images with ratios 1 and 0: resamples give 1, 0.5 or 0 (prob. 1/4, 1/2, 1/4) -> 95% interval [0, 1]
    two = grouped_ratio(np.array([1.0, 0.0]), np.array([1.0, 1.0]), ["a", "b"], BootstrapConfig(n_boot=2000))
    assert two == pytest.approx((0.5, 0.0, 1.0), abs=1e-12)


def test_every_baseline_is_a_valid_recipe_on_shared_data() -> None:
    data = RecipeData(model="m", train="t", image="i", anchors="a", replay="r", rank_store="s")
    every = recipes(data, steps=7, seed=3)
    assert {"plain_lora", "full_ft", "viral", "vision_unfrozen", "replay", "staged", "posthoc", "vdc"} <= set(every)
    assert all(c.train_manifest == "t" and c.max_steps == 7 and c.seed == 3 for c in every.values())
    assert every["staged"].pre.manifest == "i" and every["posthoc"].post.manifest == "i"
    vdc = every["vdc"]
    assert vdc.drift_weight and vdc.contrast_weight and vdc.align_weight and vdc.lora_ranks == "modality"
    for term in ("drift_weight", "contrast_weight", "align_weight"):  # the ablation removes exactly that term
        assert getattr(every[f"vdc-no_{term.removesuffix('_weight')}"], term) == 0.0


def test_vdc_table_one_seed_micro_organism(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("vdc_table", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    micro = OrganismConfig(stage1_steps=2, stage2_steps=2, batch_size=4, threads=1, synth=SynthConfig(
        stage1_scenes=8, stage1_text_scenes=0, stage2_examples=16, eval_scenes=4, eval_text_scenes=0, eval_text_answerable=8))
    rows = module.run(tmp_path, seed=0, names=["plain_lora", "vdc"], steps=2, organism=micro, batch_size=4,
                      projector_steps=1, n_boot=50, progress=False)
    by = {r["recipe"]: r for r in rows}
    assert set(by) == {"base", "organism_ko_ft", "plain_lora", "vdc"}
    assert by["plain_lora"]["step_ratio"] == pytest.approx(1.0, abs=1e-12)  # the reference against itself
    assert by["vdc"]["step_ratio"] > 0
    for r in rows:
        acc, lo, hi = r["ko_text_acc"]
        assert 0.0 <= lo <= acc <= hi <= 1.0
    assert (tmp_path / "table.txt").read_text().count("\n") == len(rows) + 2


def test_budget_is_the_first_step_count_on_the_plateau() -> None:
    grid = {(150, 1e-3): 0.40, (300, 1e-3): 1.00, (300, 3e-4): 0.99, (600, 3e-4): 1.00, (150, 3e-3): 0.97}
    assert choose_budget(grid, tol=0.02) == (300, 1e-3)  # 150 misses the plateau by 0.03; at 300 the better lr wins
    assert choose_budget({**grid, (150, 3e-3): 0.98}, tol=0.02) == (150, 3e-3)
    assert choose_budget({(300, 1e-3): 0.5, (300, 3e-4): 0.5}, tol=0.0) == (300, 3e-4)  # a tie: the smaller lr
    with pytest.raises(ValueError, match="non-finite"):
        choose_budget({(150, 1e-3): float("nan")})


def _eval(vd: list[bool], correct: list[bool], ids: list[str]) -> xr.Dataset:
    n = len(ids)
    return xr.Dataset(
        {"visually_dependent": ("example", np.array(vd)), "has_partner": ("example", np.ones(n, bool)),
         "correct": (("condition", "example"), np.array([correct, correct, correct]))},
        coords={"condition": ["real", "blank", "mismatched"], "example": ids,
                "example_lang": ("example", ["ko", "ko", "ko"]),
                "example_image_dependent": ("example", [True, True, False])})


def test_pooled_seeds_are_distinct_units_and_ratios_pool_the_means() -> None:
    ids = ["q1", "q2", "t1"]
    base = _eval([True, True, False], [True, True, True], ids)
    evals = {0: {"base": base, "r": _eval([True, False, False], [True, True, False], ids)},
             1: {"base": base, "r": _eval([True, True, False], [True, True, True], ids)}}
    groups = {s: {"q1": "img-a", "q2": "img-b", "t1": "img-c"} for s in (0, 1)}  # the same file names in both seeds
    pooled, units = pool_seeds(evals, groups)
    assert pooled["r"]["example"].values.tolist() == ["s0/q1", "s0/q2", "s0/t1", "s1/q1", "s1/q2", "s1/t1"]
    assert len(set(units.values())) == 6  # seed 0's img-a is not seed 1's img-a
    rows = {r["recipe"]: r for r in recipe_rows(pooled, "base", units, {}, config=BootstrapConfig(n_boot=200))}
    assert rows["r"]["ko_vd_pct"][0] == pytest.approx(100 * 3 / 4, abs=1e-12)  # (1 + 0 + 1 + 1) / (4 base)
    assert rows["r"]["ko_text_acc"][0] == pytest.approx(1 / 2, abs=1e-12)  # t1 wrong in seed 0, right in seed 1
    assert rows["base"]["ko_vd_pct"][:1] == (100.0,)
