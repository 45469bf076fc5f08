"""VDC against its baselines on the model organism: one table row per recipe, 95% intervals over images.

    python examples/vdc_table.py --out runs/vdc_table --seeds 0,1,2 [--organisms DIR0,DIR1,DIR2]
        [--rank-stores S0,S1,S2] [--budget auto | STEPS:LR] [--recipes plain_lora,vdc] [--judge]

Per seed: builds (or reuses) the organism, holds out a validation split (20% of the images) of the Korean
fine-tune's training data, trains every recipe from the base on the rest with the same data, budget and seed,
evaluates each with probe's visual-dependence evaluation on the organism's eval sets, and writes
out/seed<k>/table.txt. With several seeds, out/table.txt pools them (images of different seeds are different
units). Columns: Korean and English visual dependence on image-dependent questions as % of base's, Korean
accuracy on the fine-tune's own text-answerable task, median step time as a ratio to plain LoRA's.

Budget (`--budget auto`): chosen once, on the first seed, by plain LoRA's own accuracy on the validation split
over the grid BUDGET_STEPS × BUDGET_LRS declared below (fixed before the grid was run): the fewest steps whose
accuracy is within PLATEAU_TOL of the grid's best (train.mitigate.table.choose_budget). Every recipe then gets
those steps and that lr (full fine-tuning lr / 3, as before). Written to out/budget.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from probe.analysis.stats import BootstrapConfig
from probe.data.manifest import read_manifest, write_manifest
from probe.eval.dependence import evaluate_dependence, load_dependence, save_dependence, unit_of
from probe.models.loading import load_model
from train.mitigate import mitigate
from train.mitigate.recipes import RecipeData, recipes
from train.mitigate.table import choose_budget, format_rows, pool_seeds, recipe_rows
from train.organism import OrganismConfig, build_organism, existing_organism

# Declared before any budget run (issue 12): plain LoRA's grid, the plateau tolerance, the validation share.
BUDGET_STEPS = (150, 300, 600, 1200)
BUDGET_LRS = (3e-4, 1e-3, 3e-3)
PLATEAU_TOL = 0.02
VAL_FRACTION = 0.2


def organism_data(out: Path, seed: int, config: OrganismConfig, rank_store: str | None = None,
                  organism_dir: Path | None = None) -> tuple[RecipeData, list, list, object]:
    """The organism (built once, or an existing one read in place) and the recipes' shared manifests.

    Returns (data, eval examples, validation examples, organism). The Korean fine-tune's training data is split
    by image: VAL_FRACTION of its images (seeded) are held out for choosing the budget, the rest is `data.train`.
    """
    where = organism_dir or out / "organism"
    org = existing_organism(where, seed=seed, config=config)
    if org is None:
        if organism_dir is not None:
            raise SystemExit(f"{organism_dir}: no organism with seed {seed} and the current OrganismConfig()")
        org = build_organism(where, seed=seed, config=config)
    keep = set(config.question_types)
    pick = lambda split: [e for e in read_manifest(org.manifests[split]) if e.question_type in keep]  # noqa: E731
    stage1, stage2 = pick("stage1_train"), pick("stage2_train")
    images = sorted({unit_of(e) for e in stage2})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(images, size=max(1, int(round(VAL_FRACTION * len(images)))), replace=False).tolist())
    train, val = [e for e in stage2 if unit_of(e) not in held], [e for e in stage2 if unit_of(e) in held]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_manifest(val, data / "val_ko.jsonl")
    paths = {
        "train": write_manifest(train, data / "train_ko.jsonl"),
        "image": write_manifest(stage1[:256], data / "image_small.jsonl"),
        "anchors": write_manifest(stage1, data / "anchors.jsonl"),
        "replay": write_manifest([e for e in stage1 if e.lang == "en"], data / "replay_en.jsonl"),
    }
    evals = pick("eval_image") + pick("eval_text")
    return RecipeData(model=str(org.base), rank_store=rank_store, **{k: str(v) for k, v in paths.items()}), evals, val, org


def select_budget(out: Path, data: RecipeData, val: list, *, seed: int, threads: int | None, batch_size: int = 32,
                  steps: tuple[int, ...] = BUDGET_STEPS, lrs: tuple[float, ...] = BUDGET_LRS, tol: float = PLATEAU_TOL,
                  progress: bool = True) -> dict:
    """Train plain LoRA at every grid budget, score each on the validation split, choose; writes out/budget.json.

    Validation accuracy is a point value: it is the data used to select, so no interval is reported on it.
    """
    acc: dict[tuple[int, float], float] = {}
    for lr in lrs:
        for n in steps:
            cfg = recipes(data, steps=n, seed=seed, batch_size=batch_size, lr=lr, threads=threads,
                          ablations=False)["plain_lora"]
            res = mitigate(cfg, out / "budget" / f"lr{lr:g}-steps{n}", progress=progress)
            ev = evaluate_dependence(load_model(res.final, attn_implementation="eager"), val, batch_size=64, progress=False)
            acc[(n, lr)] = float(ev["correct"].sel(condition="real").values.mean())
            print(f"budget grid: steps {n} lr {lr:g} -> Korean validation accuracy {acc[(n, lr)]:.3f}", flush=True)
    chosen_steps, chosen_lr = choose_budget(acc, tol)
    record = {"seed": seed, "validation_examples": len(val), "steps_grid": list(steps), "lr_grid": list(lrs),
              "plateau_tol": tol, "validation_accuracy": [{"steps": n, "lr": lr, "acc": a} for (n, lr), a in acc.items()],
              "chosen": {"steps": chosen_steps, "lr": chosen_lr}}
    (out / "budget.json").write_text(json.dumps(record, indent=1))
    return record


def run(out: Path, *, seed: int = 0, names: list[str] | None = None, steps: int | None = None, lr: float = 1e-3,
        organism: OrganismConfig | None = None, organism_dir: Path | None = None, batch_size: int = 32,
        projector_steps: int = 50, rank_store: str | None = None, n_boot: int = 1000, threads: int | None = None,
        progress: bool = True) -> list[dict]:
    """Train and evaluate the chosen recipes (all by default); returns the table rows (also written to out/).

    Each model's evaluation is kept in out/evals/<name>.zarr (pooled over seeds by `pooled_table`).
    """
    cfg = organism or OrganismConfig()
    data, evals, _, org = organism_data(out, seed, cfg, rank_store, organism_dir)
    every = recipes(data, steps=steps or cfg.stage2_steps, seed=seed, batch_size=batch_size, lr=lr,
                    projector_steps=projector_steps, threads=threads or cfg.threads or None)
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
    ev = {}
    for name, path in models.items():
        saved = out / "evals" / f"{name}.zarr"
        stamp = saved.with_suffix(".model")
        if saved.exists() and stamp.is_file() and stamp.read_text() == str(path):
            ev[name] = load_dependence(saved, group=None)
            continue
        ev[name] = evaluate_dependence(load_model(path, attn_implementation="eager"), evals, batch_size=64, progress=progress)
        saved.parent.mkdir(parents=True, exist_ok=True)
        save_dependence(ev[name], saved, group=None)
        stamp.write_text(str(path))
    groups = {e.id: unit_of(e) for e in evals}
    rows = recipe_rows(ev, "base", groups, seconds, config=BootstrapConfig(n_boot=n_boot, seed=seed))
    (out / "table.txt").write_text(format_rows(rows) + "\n")
    (out / "rows.json").write_text(json.dumps({"seed": seed, "organism": asdict(cfg), "steps": steps or cfg.stage2_steps,
                                               "lr": lr, "step_seconds": seconds, "rows": rows}, indent=1, default=str))
    return rows


def pooled_table(out: Path, seed_dirs: dict[int, Path], *, n_boot: int = 1000) -> list[dict]:
    """One table over seeds: every seed's examples pooled (images resampled across seeds); step × = mean [min, max]."""
    evals, groups, ratios = {}, {}, {}
    for seed, d in seed_dirs.items():
        record = json.loads((d / "rows.json").read_text())
        names = [r["recipe"] for r in record["rows"]]
        evals[seed] = {n: load_dependence(d / "evals" / f"{n}.zarr", group=None) for n in names}
        groups[seed] = dict(zip(evals[seed]["base"]["example"].values.tolist(),
                                evals[seed]["base"]["example_group"].values.tolist()))
        for r in record["rows"]:
            ratios.setdefault(r["recipe"], []).append(r["step_ratio"])
    pooled, units = pool_seeds(evals, groups)
    rows = recipe_rows(pooled, "base", units, {}, config=BootstrapConfig(n_boot=n_boot, seed=0))
    for r in rows:
        vals = [v for v in ratios.get(r["recipe"], []) if v is not None and np.isfinite(v)]
        r["step_ratio"] = float(np.mean(vals)) if vals else float("nan")
        if vals:
            r["step_ratio_range"] = (float(min(vals)), float(max(vals)))
    (out / "table.txt").write_text(format_rows(rows) + "\n")
    (out / "rows.json").write_text(json.dumps({"seeds": sorted(seed_dirs), "rows": rows}, indent=1, default=str))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/vdc_table"))
    ap.add_argument("--seeds", default="0", help="comma list; one organism per seed")
    ap.add_argument("--organisms", default="", help="comma list of existing organism folders, one per seed (read only)")
    ap.add_argument("--recipes", default="", help="comma list (default: all, with ablations)")
    ap.add_argument("--budget", default="auto", help="'auto' (plain LoRA's validation plateau on the first seed) or STEPS:LR")
    ap.add_argument("--rank-stores", default="", help="comma list, one per seed: base store with attn_share "
                    "(modality-aware LoRA ranks for VDC, plus the uniform-rank ablation); default uniform ranks")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--judge", action="store_true",
                    help="then capture base, plain LoRA and VDC of the first seed: out/judge/report.html side by side")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    orgs = [Path(p) for p in args.organisms.split(",") if p] or [None] * len(seeds)
    stores = [p for p in args.rank_stores.split(",") if p] or [None] * len(seeds)
    if len(orgs) != len(seeds) or len(stores) != len(seeds):
        raise SystemExit(f"--organisms / --rank-stores: {len(orgs)} / {len(stores)} entries for {len(seeds)} seeds")
    cfg = OrganismConfig()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.budget == "auto":
        saved = args.out / "budget.json"
        if saved.is_file():
            chosen = json.loads(saved.read_text())["chosen"]
        else:
            seed_out = args.out / f"seed{seeds[0]}"
            data, _, val, _ = organism_data(seed_out, seeds[0], cfg, stores[0], orgs[0])
            chosen = select_budget(args.out, data, val, seed=seeds[0], threads=args.threads)["chosen"]
        steps, lr = int(chosen["steps"]), float(chosen["lr"])
    else:
        steps_s, _, lr_s = args.budget.partition(":")
        steps, lr = int(steps_s), float(lr_s or 1e-3)
    print(f"budget: {steps} steps at lr {lr:g}", flush=True)
    names = [n for n in args.recipes.split(",") if n] or None
    dirs = {}
    for seed, org, store in zip(seeds, orgs, stores):
        dirs[seed] = args.out / f"seed{seed}"
        rows = run(dirs[seed], seed=seed, names=names, steps=steps, lr=lr, organism=cfg, organism_dir=org,
                   rank_store=store, threads=args.threads)
        print(f"seed {seed}\n{format_rows(rows)}", flush=True)
    if len(dirs) > 1:
        print(f"pooled over seeds {seeds}\n{format_rows(pooled_table(args.out, dirs))}")
    if args.judge:
        report = judge_seed(dirs[seeds[0]], seeds[0], cfg, orgs[0], args.out / "judge")
        print(f"three-way report: {report}")


def judge_seed(seed_dir: Path, seed: int, cfg: OrganismConfig, organism_dir: Path | None, out: Path,
               names: tuple[str, ...] = ("plain_lora", "vdc")) -> Path:
    """Base against each of `names` (trained by `run` in seed_dir) by probe's capture and comparison report."""
    from train.mitigate.judge import judge

    _, evals, _, org = organism_data(seed_dir, seed, cfg, None, organism_dir)
    runs = {n: seed_dir / "runs" / n for n in names}
    judge({"base": org.base, **{n: d / "main" / "final" for n, d in runs.items()}}, evals, out, runs=runs)
    return out / "report.html"


if __name__ == "__main__":
    main()
