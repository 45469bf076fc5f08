"""Candidate ranking speed: one shared prompt forward + K continuations (new) vs K full forwards (old).

Prints, in one run, examples/s of both on the organism's colour questions (real images), the ratio, and the
largest difference of their candidate log-probabilities. With --organism DIR it uses a built organism's base
model and eval manifests; without, a random-weight model of the organism's architecture on freshly generated
synthetic eval data (the speed does not depend on the weights).

    python benchmarks/eval_speed.py [--organism DIR] [--examples 256] [--batch-size 64] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def load(organism: str | None, tmp: Path, n: int):
    """(adapter, examples with their images opened, candidate lists) for the organism's colour questions."""
    from probe.data.manifest import read_manifest
    from probe.data.synth import SynthConfig, generate
    from probe.eval.candidates import plan_candidates
    from probe.eval.dependence import _open
    from probe.models.registry import adapter_for

    if organism:
        from probe.models.loading import load_model
        from train.organism import OrganismConfig, existing_organism

        org = existing_organism(organism, config=OrganismConfig())
        if org is None:
            raise SystemExit(f"no finished organism in {organism} (default config, seed 0)")
        adapter, manifests = load_model(org.base, attn_implementation="eager"), org.manifests
    else:
        from probe.testing import tiny_llava

        adapter = adapter_for(*tiny_llava(0))
        manifests = generate(tmp, seed=0, config=SynthConfig(stage1_scenes=1, stage2_examples=1, eval_scenes=n // 2,
                                                             eval_text_answerable=1))
    exs = [e for e in read_manifest(manifests["eval_image"]) if e.question_type == "colour"][:n]
    exs = [replace(e, image=_open(e)) for e in exs]
    return adapter, exs, [list(p.choices) for p in plan_candidates(exs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", default=None, help="folder of a built organism (default: random weights)")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    from probe.eval.predict import answer_logprobs, candidate_logprobs

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        adapter, exs, choices = load(args.organism, Path(tmp), args.examples)
        flat = [replace(ex, answer=c) for ex, cs in zip(exs, choices) for c in cs]

        def old() -> np.ndarray:
            return np.array(answer_logprobs(adapter, flat, args.batch_size))

        def new() -> np.ndarray:
            return np.concatenate(candidate_logprobs(adapter, exs, choices, batch_size=args.batch_size))

        candidate_logprobs(adapter, exs[:4], choices[:4], batch_size=args.batch_size)  # warm-up
        seconds: dict[str, float] = {}
        scores: dict[str, np.ndarray] = {}
        for name, fn in (("old", old), ("new", new)):
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                scores[name] = fn()
                best = min(best, time.perf_counter() - t)
            seconds[name] = best
    k = np.mean([len(c) for c in choices])
    print(f"{len(exs)} examples, K = {k:.1f} candidates each, batch size {args.batch_size}, {args.threads} thread(s), "
          f"{'organism ' + args.organism if args.organism else 'random-weight organism architecture'}; best of {args.repeats}")
    for name in ("old", "new"):
        print(f"  {name}: {len(exs) / seconds[name]:8.1f} examples/s")
    print(f"  new / old speed: {seconds['old'] / seconds['new']:.2f}x")
    print(f"  max |log-prob new - old|: {np.abs(scores['new'] - scores['old']).max():.2e}")


if __name__ == "__main__":
    main()
