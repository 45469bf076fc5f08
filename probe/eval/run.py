"""`probe eval MODEL MANIFEST`: load, evaluate visual dependence, save next to / inside a store."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from probe.eval.dependence import evaluate_dependence, save_dependence


def run_eval(
    model: str | Path,
    manifest: str | Path,
    *,
    out: str | Path | None = None,
    group: str | None = "eval",
    batch_size: int = 32,
    device: str = "cpu",
    lora_adapter: str | Path | None = None,
    seed: int = 0,
    choices_file: str | Path | None = None,
) -> xr.Dataset:
    """Evaluate MODEL on MANIFEST; when `out` is given, write the dataset there (zarr group `group`).

    choices_file: JSON {lang: {question_type: [answers]}} used where examples carry no labels.choices.
    """
    from probe.data.manifest import read_manifest
    from probe.models.loading import load_model

    adapter = load_model(model, device=device, lora_adapter=lora_adapter, attn_implementation="eager")
    ds = evaluate_dependence(adapter, read_manifest(manifest), batch_size=batch_size, seed=seed,
                             choices_file=choices_file)
    ds.attrs.update({"model": str(model), "manifest": str(manifest)})
    if out is not None:
        save_dependence(ds, out, group=group)
    return ds
