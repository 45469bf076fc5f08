"""Organism training time: seconds per stage for each seed, and their ratio to the 300 s budget.

Moved here from a wall-clock assertion in tests/train/test_organism.py (timings are measured, not asserted).

    OMP_NUM_THREADS=2 python benchmarks/organism_time.py [--seeds 0 1 2] [--budget 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds allowed for stage 1 + stage 2")
    args = parser.parse_args()
    from train.organism import OrganismConfig, build_organism

    cfg = OrganismConfig()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="organism-bench-") as out:
            org = build_organism(out, seed=seed, config=cfg, progress=False)
            seconds = org.seconds
        training = seconds["stage1"] + seconds["stage2"]
        print(json.dumps({"seed": seed, "steps": {k: v["steps"] for k, v in org.stages.items()}, **{k: round(v, 1) for k, v in seconds.items()},
                          "training_over_budget": round(training / args.budget, 3)}))


if __name__ == "__main__":
    main()
