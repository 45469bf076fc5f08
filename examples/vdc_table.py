"""VDC against its baselines on the model organism: one table row per recipe, 95% intervals over images.

    python examples/vdc_table.py --out runs/vdc_table --seed 0 [--recipes plain_lora,vdc] [--steps 150]

Builds (or reuses) the organism, trains every recipe from its base on the Korean fine-tune with the same
data, steps and seed, evaluates each with probe's visual-dependence evaluation, and prints: Korean and English
visual dependence on image-dependent questions as % of base's, Korean accuracy on the fine-tune's own
text-answerable task, and median step time as a ratio to plain LoRA's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from probe.analysis.stats import BootstrapConfig
from probe.data.manifest import read_manifest, write_manifest
from probe.eval.dependence import evaluate_dependence
from probe.models.loading import load_model
from train.mitigate import mitigate
from train.mitigate.recipes import RecipeData, recipes
from train.mitigate.table import format_rows, recipe_rows
from train.organism import OrganismConfig, build_organism, existing_organism


def organism_data(out: Path, seed: int, config: OrganismConfig, rank_store: str | None = None) -> tuple[RecipeData, list, object]:
    """The organism (built once) and the recipes' shared manifests, restricted to its question types."""
    org = existing_organism(out / "organism", seed=seed, config=config) or build_organism(out / "organism", seed=seed, config=config)
    keep = set(config.question_types)
    pick = lambda split: [e for e in read_manifest(org.manifests[split]) if e.question_type in keep]  # noqa: E731
    stage1, stage2 = pick("stage1_train"), pick("stage2_train")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": write_manifest(stage2, data / "train_ko.jsonl"),
        "image": write_manifest(stage1[:256], data / "image_small.jsonl"),
        "anchors": write_manifest(stage1, data / "anchors.jsonl"),
        "replay": write_manifest([e for e in stage1 if e.lang == "en"], data / "replay_en.jsonl"),
    }
    evals = pick("eval_image") + pick("eval_text")
    return RecipeData(model=str(org.base), rank_store=rank_store, **{k: str(v) for k, v in paths.items()}), evals, org


def run(out: Path, *, seed: int = 0, names: list[str] | None = None, steps: int | None = None,
        organism: OrganismConfig | None = None, batch_size: int = 32, projector_steps: int = 50,
        rank_store: str | None = None, n_boot: int = 1000, progress: bool = True) -> list[dict]:
    """Train and evaluate the chosen recipes (all by default); returns the table rows (also written to out/)."""
    cfg = organism or OrganismConfig()
    data, evals, org = organism_data(out, seed, cfg, rank_store)
    every = recipes(data, steps=steps or cfg.stage2_steps, seed=seed, batch_size=batch_size, lr=1e-3,
                    projector_steps=projector_steps, threads=cfg.threads)
    chosen = names or list(every)
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {sorted(every)}")
    if "plain_lora" not in chosen:
        chosen = ["plain_lora", *chosen]  # the step-time reference
    results, seconds = {}, {}
    for name in chosen:
        res = mitigate(every[name], out / "runs" / name, progress=progress)
        results[name], seconds[name] = res.final, res.step_seconds
    models = {"base": org.base, "organism_ko_ft": org.ko_ft, **results}
    ev = {name: evaluate_dependence(load_model(path, attn_implementation="eager"), evals, batch_size=64, progress=progress)
          for name, path in models.items()}
    groups = {e.id: str(e.image) for e in evals}
    rows = recipe_rows(ev, "base", groups, seconds, config=BootstrapConfig(n_boot=n_boot, seed=seed))
    (out / "table.txt").write_text(format_rows(rows) + "\n")
    (out / "rows.json").write_text(json.dumps({"seed": seed, "organism": asdict(cfg), "rows": rows}, indent=1, default=str))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/vdc_table"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", default="", help="comma list (default: all, with ablations)")
    ap.add_argument("--steps", type=int, default=None, help="main-stage steps (default: the organism's stage-2 steps)")
    ap.add_argument("--rank-store", default=None, help="base store with attn_share: modality-aware LoRA ranks for VDC")
    args = ap.parse_args()
    rows = run(args.out, seed=args.seed, names=[n for n in args.recipes.split(",") if n] or None, steps=args.steps,
               rank_store=args.rank_store)
    print(format_rows(rows))


if __name__ == "__main__":
    main()
