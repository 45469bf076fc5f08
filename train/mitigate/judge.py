"""The judgement by the same tools: capture base and the fine-tunes alike and show base-vs-each comparisons together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from probe.data.example import Example
from probe.report import compare_side_by_side
from train.mitigate.plot import read_steps, steps_figure

DONE = ".judge-done"


def judge(models: Mapping[str, str | Path], evals: Sequence[Example], out_dir: str | Path, *,
          runs: Mapping[str, str | Path] | None = None, capture_examples: int = 400, progress: bool = True) -> dict[str, Any]:
    """Evaluate and capture every model (the quickstart's spec and probe set), then out_dir/report.html (+ .json).

    models: name -> model folder, the first being the `before` of every comparison (the base); evals: the
    organism's eval questions (the probe set is their first `capture_examples` image-dependent ones, as in the
    quickstart). The report is probe.report.compare_side_by_side — attention share per layer, key-space OOD,
    projector drift, probes, behaviour — one column per fine-tune. runs: name -> mitigate output folder whose
    main/steps.jsonl is plotted in a last section. A finished capture is reused.
    """
    from train.quickstart import evaluate_and_capture, probe_set

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(models)
    if len(names) < 2:
        raise ValueError(f"judge: need a base and at least one fine-tune, got {names}")
    probes = probe_set(list(evals), capture_examples)
    if not probes:
        raise ValueError("judge: no image-dependent questions among the eval examples")
    stores = {}
    for name, path in models.items():
        stores[name] = out / f"{name}.zarr"
        marker = out / f"{name}{DONE}"
        if not (marker.is_file() and marker.read_text() == str(path)):
            evaluate_and_capture(path, list(evals), probes, stores[name], name=name, progress=progress)
            marker.write_text(str(path))
    extra = []
    if runs:
        extra.append(("Training: loss terms and drift per step (main stage)", None,
                      {n: [steps_figure(read_steps(Path(d) / "main" / "steps.jsonl"), n)] for n, d in runs.items()}))
    return compare_side_by_side(stores[names[0]], {n: stores[n] for n in names[1:]}, out / "report.html",
                                out / "report.json", extra=extra)
