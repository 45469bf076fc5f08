"""The planted-cause benchmark: train each planted variant of an organism, verify it, diagnose it blind, tabulate.

    python examples/planted_table.py --organism runs/org_s0 --seed 0 --out /tmp/planted/s0 [--analyses]
    python examples/planted_table.py --aggregate /tmp/planted/s0 /tmp/planted/s1 /tmp/planted/s2

Per organism: train.planted recipes (fixed before any run: 300 steps, lr 1e-3, batch 32), `verify` (Korean visual
dependence of base, variant, variant with base's planted component restored; on the first 100 eval images'
colour questions), then `probe diagnose base variant eval_image.jsonl` on the first 40 images' colour questions
(the diagnosis never sees the recipe), and the organism's own ko_ft. rows.jsonl holds one row per variant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from probe.data.manifest import read_manifest
from probe.diagnose import diagnose
from train.planted import TRAINS, organism_data, planted_recipes, train_planted, verify

PLANTED_NAME = {"projector": "projector", "attention": "lm.qk", "decoder": "decoder", "shortcut": "?", "null": "-",
                "ko_ft": "?"}


def run(organism: Path, seed: int, out: Path, analyses: bool, causes: list[str]) -> list[dict]:
    """Train, verify and diagnose each planted variant of one organism; appends to out/rows.jsonl."""
    record = json.loads((organism / "organism.json").read_text())
    manifest = organism / record["manifests"]["eval_image"]
    colour = [e for e in read_manifest(manifest) if e.question_type == "colour"]
    first = list(dict.fromkeys(str(e.image) for e in colour))[:100]
    check = [e for e in colour if str(e.image) in set(first)]
    recipes = planted_recipes(organism_data(organism, seed=seed), seed=seed, threads=1)
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for cause in causes:
        if cause == "ko_ft":
            model, verified = organism / "ko_ft", {}
        else:
            model = train_planted(recipes[cause], out / cause, progress=False)
            verified = verify(organism / "base", model, recipes[cause], check)
        d = diagnose(organism / "base", model, manifest, out / cause / "diagnosis", images=40,
                     question_types=["colour"], analyses=analyses, seed=seed)
        row = {"seed": seed, "planted": cause, "planted_name": PLANTED_NAME[cause], "trains": list(TRAINS.get(cause, ())),
               "verify": verified, "named": d.named, "reason": d.reason, "behaviour": d.behaviour,
               "ranked": [[e.target, e.restored, e.low, e.high] for e in d.ranked],
               "patches": [[e.target, e.restored, e.low, e.high] for e in d.patches], "verdict": d.verdict}
        rows.append(row)
        with (out / "rows.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    """One table line: seed, planted cause, KO VD kept, named cause, top-2 ranked with intervals."""
    kept = r["verify"].get("ko_share_kept", float("nan")) if r["verify"] else float("nan")
    top = "; ".join(f"{t} {x:.0%} [{lo:.0%}, {hi:.0%}]" for t, x, lo, hi in r["ranked"][:2])
    ok = "" if r["planted_name"] in ("?",) else ("yes" if (r["named"] == r["planted_name"] or
                                                        (r["planted_name"] == "-" and r["named"] == "no single cause"))
                                               else "NO")
    return f"{r['seed']:>4} {r['planted']:<10} {kept:>7.0%} {r['named']:<16} {ok:<4} {top}"


def aggregate(folders: list[Path]) -> None:
    """Print every row of the given runs as one table."""
    print(f"{'seed':>4} {'planted':<10} {'KO kept':>7} {'named':<16} {'ok':<4} top two (restored [95%])")
    for folder in folders:
        for line in (folder / "rows.jsonl").read_text(encoding="utf-8").splitlines():
            print(format_row(json.loads(line)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--causes", default="projector,attention,decoder,shortcut,null,ko_ft")
    parser.add_argument("--analyses", action="store_true", help="also capture and write the comparison report")
    parser.add_argument("--aggregate", type=Path, nargs="+")
    args = parser.parse_args()
    if args.aggregate:
        aggregate(args.aggregate)
        return
    if args.organism is None or args.out is None:
        parser.error("--organism and --out are needed (or --aggregate)")
    run(args.organism, args.seed, args.out, args.analyses, args.causes.split(","))


if __name__ == "__main__":
    main()
