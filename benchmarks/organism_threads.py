"""Stage-1 training speed of the organism with 1 and 2 torch threads, alternating, under whatever load the machine has.

    python benchmarks/organism_threads.py --organism runs/organism [--steps 20] [--rounds 2]

Prints s/step per run with the 1-minute load and what train.organism.free_threads would choose.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from probe.data.manifest import read_manifest
    from probe.models.loading import load_model
    from train.organism import free_threads
    from train.sft import SFTConfig, sft

    record = json.loads((args.organism / "organism.json").read_text())
    examples = [e for e in read_manifest(args.organism / record["manifests"]["stage1_train"])
                if e.question_type in record["config"]["question_types"]][:2000]
    for threads in [2, 1] * args.rounds:
        adapter = load_model(args.organism / "base")
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            res = sft(adapter, examples, SFTConfig(lr=1e-4, max_steps=args.steps, batch_size=32, threads=threads,
                                                   device="cpu", checkpoint_every=10**9), tmp, resume=False, progress=False)
        print(json.dumps({"threads": threads, "s_per_step": round(res.seconds / args.steps, 3), "load1": round(load, 2),
                          "free_threads": free_threads()}), flush=True)


if __name__ == "__main__":
    main()
