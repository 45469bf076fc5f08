"""VDC step time over plain LoRA's, both measured in this one run (the issue's goal: <= 1.3x; the proposal predicts 1.5x).

    OMP_NUM_THREADS=2 python benchmarks/vdc_overhead.py [--steps 12] [--batch-size 32] [--threads 2]

The organism-sized tiny LLaVA on synthetic Korean text-answerable data; median seconds per optimizer step
(first step dropped), alternating the two recipes so that machine load hits both alike. VDC uses uniform
ranks here (modality-aware ranks change which modules get which rank, not the step's work).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="plain/VDC alternations")
    args = ap.parse_args()
    import torch

    from probe.data.manifest import read_manifest, write_manifest
    from probe.data.synth import SynthConfig, generate
    from probe.models.tiny import tiny_llava
    from train.mitigate import mitigate
    from train.mitigate.recipes import RecipeData, recipes

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vdc-bench-") as tmp:
        root = Path(tmp)
        m = generate(root / "data", seed=0, config=SynthConfig(stage1_scenes=64, stage1_text_scenes=0, stage2_examples=256,
                                                              eval_scenes=1, eval_text_scenes=0, eval_text_answerable=1))
        colour = lambda split: [e for e in read_manifest(m[split]) if e.question_type == "colour"]  # noqa: E731
        stage1 = colour("stage1_train")
        paths = {k: str(write_manifest(v, root / "data" / f"{k}.jsonl")) for k, v in
                 {"train": colour("stage2_train"), "image": stage1, "anchors": stage1,
                  "replay": [e for e in stage1 if e.lang == "en"]}.items()}
        model, processor = tiny_llava(0)
        model.save_pretrained(root / "model")
        processor.save_pretrained(root / "model")
        every = recipes(RecipeData(model=str(root / "model"), **paths), steps=args.steps, batch_size=args.batch_size,
                        threads=args.threads, checkpoint_every=10**6)
        times: dict[str, list[float]] = {"plain_lora": [], "vdc": []}
        for r in range(args.rounds):
            for name in times:
                res = mitigate(every[name], root / f"{name}-{r}", resume=False, progress=False)
                times[name].append(res.step_seconds)
    plain, vdc = statistics.median(times["plain_lora"]), statistics.median(times["vdc"])
    print(json.dumps({"plain_lora_s_per_step": round(plain, 4), "vdc_s_per_step": round(vdc, 4),
                      "vdc_over_plain": round(vdc / plain, 3), "steps": args.steps, "batch_size": args.batch_size,
                      "threads": args.threads, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
