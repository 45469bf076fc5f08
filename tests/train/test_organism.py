"""Acceptance of the model organism (issue 3): base sees, ko_ft goes blind in Korean; 3 seeds.

Each stage trains to a held-out target (0.99, train.organism.OrganismConfig); the 0.95 asserted here is the
margin left for other processors and thread counts (checked with 1 and 2 threads, see the README).

Training time is measured by benchmarks/organism_time.py, not asserted here.
"""

from __future__ import annotations

import json

import pytest

from probe.data.manifest import read_manifest
from probe.eval.dependence import evaluate_dependence
from probe.models.loading import load_model
from train.organism import OrganismConfig

pytestmark = pytest.mark.organism
NEAR_CHANCE = 0.15  # blank-image accuracy may exceed chance by at most this much


@pytest.fixture(scope="session", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def organism(request, organism_cache):
    seed = request.param
    cfg = OrganismConfig()
    result = organism_cache(seed, cfg)  # trained once per session, shared with the notebook test
    keep = set(cfg.question_types)
    image = [e for e in read_manifest(result.manifests["eval_image"]) if e.question_type in keep]
    text = [e for e in read_manifest(result.manifests["eval_text"]) if e.question_type in keep]
    evals = {name: evaluate_dependence(load_model(path, attn_implementation="eager"), image + text,
                                       batch_size=64, progress=False)
             for name, path in (("base", result.base), ("ko_ft", result.ko_ft))}
    numbers = {"seed": seed, "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
               "steps": {k: v["steps"] for k, v in result.stages.items()},
               "reached": {k: v["reached"] for k, v in result.stages.items()}}
    for name, ds in evals.items():
        for lang in ("en", "ko"):
            for kind in ("image", "text"):
                sel = dict(lang=lang, question_type="all", kind=kind)
                for cond in ("real", "blank", "mismatched"):
                    numbers[f"{name}.{lang}.{kind}.{cond}"] = round(float(ds["accuracy"].sel(**sel, condition=cond)), 3)
            numbers[f"{name}.{lang}.chance"] = round(float(ds["chance"].sel(lang=lang, question_type="all",
                                                                             kind="image")), 3)
            numbers[f"{name}.{lang}.visual_dependence"] = round(
                float(ds["visual_dependence"].sel(lang=lang, question_type="all")), 3)
    print("\nORGANISM " + json.dumps(numbers))
    return numbers


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_base_sees(organism, lang) -> None:
    assert organism[f"base.{lang}.image.real"] >= 0.95
    assert organism[f"base.{lang}.image.blank"] <= organism[f"base.{lang}.chance"] + NEAR_CHANCE


def test_ko_ft_blind_in_korean(organism, record_property) -> None:
    record_property("organism", json.dumps(organism))  # printed in the run's summary (tests/conftest.py)
    assert organism["ko_ft.ko.visual_dependence"] <= 0.5 * organism["base.ko.visual_dependence"]


def test_each_stage_reached_its_target_before_its_cap(organism) -> None:
    assert organism["reached"] == {"stage1": True, "stage2": True}


def test_ko_ft_fits_its_data(organism) -> None:
    assert organism["ko_ft.ko.text.real"] >= 0.95
