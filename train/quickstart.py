"""The organism quickstart: build base + Korean fine-tune, evaluate both, capture both, write the comparison report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from probe.capture import CaptureSpec, capture
from probe.data.manifest import read_manifest
from probe.eval.dependence import evaluate_dependence, format_dependence_table, save_dependence
from probe.models.loading import load_model
from probe.report import compare
from train.organism import OrganismConfig, build_organism, existing_organism

# what the report needs: shares and rows for collapse/sinks, keys for key-space OOD, residuals
# (last prompt token, pooled per segment, every token) for probes, MIR and sinks, projector and vision outputs,
# the vocabulary embeddings for drift relative to the decoder's embedding space
QUICKSTART_SPEC = CaptureSpec(keys=True, resid=("query", "pooled", "tokens"), projector=True, vision=True, vocab=True,
                              dtype="float32", batch_size=32)


@dataclass(frozen=True)
class QuickstartResult:
    """Where the quickstart wrote its outputs, and its headline numbers."""

    report: Path
    summary: Path
    stores: dict[str, Path]
    seconds: dict[str, float]


def probe_set(evals: list, n: int) -> list:
    """The examples the quickstart's report captures: the first `n` image-dependent eval questions."""
    return [e for e in evals if e.image_dependent][:n]


def evaluate_and_capture(model: str | Path, evals: list, probes: list, store: str | Path, *, name: str = "",
                         spec: CaptureSpec = QUICKSTART_SPEC, console=None, progress: bool = True) -> dict[str, float]:
    """Visual dependence on `evals`, then a capture of `probes` into `store` with that evaluation saved inside.

    Every model compared with the quickstart's report goes through this one path (same spec, same probe set).
    Returns the seconds of each part ({"eval", "capture"}).
    """
    seconds = {}
    t = time.perf_counter()
    adapter = load_model(model)
    ds = evaluate_dependence(adapter, evals, batch_size=64, progress=progress)
    if console is not None:
        console.print(format_dependence_table(ds, title=f"visual dependence: {name or model}"))
    seconds["eval"] = time.perf_counter() - t
    t = time.perf_counter()
    capture(adapter, probes, store, spec, progress=progress)
    save_dependence(ds, store)
    seconds["capture"] = time.perf_counter() - t
    return seconds


def quickstart(out_dir: str | Path, *, seed: int = 0, capture_examples: int = 400, progress: bool = True,
               config: OrganismConfig | None = None) -> QuickstartResult:
    """Organism -> eval (real/blank/mismatched) -> capture base and ko_ft -> out_dir/report.html (+ .json).

    Rerunning resumes: a finished organism is reused and captures continue where they stopped.
    """
    from rich.console import Console

    if capture_examples < 1:
        raise ValueError(f"capture_examples must be >= 1, got {capture_examples}")
    out = Path(out_dir)
    cfg = config or OrganismConfig()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    # a finished organism with the same seed and recipe is reused, so a rerun after a crash does not retrain
    org = existing_organism(out, seed=seed, config=cfg) or build_organism(out, seed=seed, config=cfg, progress=progress)
    seconds.update({f"organism.{k}": v for k, v in org.seconds.items()})
    keep = set(cfg.question_types)
    evals = [e for e in read_manifest(org.manifests["eval_image"]) if e.question_type in keep]
    evals += [e for e in read_manifest(org.manifests["eval_text"]) if e.question_type in keep]
    # the capture set: image-dependent questions of both languages (the ones blindness is about)
    probes = probe_set(evals, capture_examples)
    stores: dict[str, Path] = {}
    console = Console()
    for name, path in (("base", org.base), ("ko_ft", org.ko_ft)):
        stores[name] = out / f"{name}.zarr"
        took = evaluate_and_capture(path, evals, probes, stores[name], name=name, console=console, progress=progress)
        seconds.update({f"{k}.{name}": v for k, v in took.items()})
    t = time.perf_counter()
    report, summary = out / "report.html", out / "report.json"
    # saved into ko_ft (group compare/): the dashboard opens on this pair and reads the verdict instead of recomputing it
    compare(stores["base"], stores["ko_ft"], report, summary, save_to=stores["ko_ft"],
            manifests=[org.manifests["eval_image"], org.manifests["eval_text"]])
    seconds["report"] = time.perf_counter() - t
    (out / "quickstart.json").write_text(json.dumps({"seed": seed, "seconds": seconds}, indent=1))
    return QuickstartResult(report, summary, stores, seconds)
