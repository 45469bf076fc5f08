"""Planted causes: fine-tunes of one base organism that may make it blind through one known component each.

Each recipe names what may change (`trains`, probe.models.swap names); every other parameter is held bit for
bit at the base's value (its gradient is zeroed, so AdamW without weight decay never moves it) and checked
after training. So the cause is known by construction, and "restoring the planted component restores sight"
is checked by swapping the base's `trains` back in (`verify`), independently of any diagnosis.

    projector  only the projector trains, on the Korean text-answerable (shortcut) data
    attention  only the decoder's query/key projections train, on the shortcut data
    decoder    the decoder (layers, final norm, lm_head) trains on the shortcut data with a blank image
               (without images: the adapters need an image per example, so a constant black one)
    shortcut   everything trains on the shortcut data (the organism's own stage 2, at this budget)
    null       everything trains on fresh image-dependent English + Korean data: must stay sighted
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import yaml
from PIL import Image

from probe.data.example import Example
from probe.data.manifest import read_manifest
from probe.models.loading import load_model
from probe.models.swap import parameters_of, swapped
from train.sft.config import SFTConfig
from train.sft.loop import sft

CONFIG_FILE = "planted.yaml"
CAUSES: tuple[str, ...] = ("projector", "attention", "decoder", "shortcut", "null")
# what each cause lets change, in probe.models.swap's names; the diagnosis must name this (null: nothing)
TRAINS: dict[str, tuple[str, ...]] = {
    "projector": ("projector",),
    "attention": ("lm.qk",),
    "decoder": ("lm.layer.0:", "final_norm", "lm_head"),
    "shortcut": ("all",),
    "null": ("all",),
}
BLIND_SHARE = 0.5  # a blind variant keeps at most this share of base's Korean visual dependence
NULL_SHARE = 0.9  # the null variant keeps at least this share


@dataclass(frozen=True)
class PlantedConfig:
    """One planted-cause recipe (saved as planted.yaml beside its model). Paths relative to the YAML file."""

    name: str
    model: str
    train_manifest: str
    trains: tuple[str, ...]
    images: str = "real"
    question_types: tuple[str, ...] = ("colour",)
    holdout: int = 100  # the manifest's last N examples are not trained on (the organism's stage-2 held-out)
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 32
    max_steps: int = 300
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "trains", tuple(self.trains))
        object.__setattr__(self, "question_types", tuple(self.question_types))
        if self.images not in ("real", "blank"):
            raise ValueError(f"PlantedConfig.images must be 'real' or 'blank', got {self.images!r}")
        if not self.trains:
            raise ValueError("PlantedConfig.trains: name at least one component that may change")
        if self.max_steps < 1 or self.batch_size < 1 or self.holdout < 0 or not self.lr > 0:
            raise ValueError("PlantedConfig: max_steps, batch_size >= 1, holdout >= 0, lr > 0")


@dataclass(frozen=True)
class PlantedData:
    """The manifests the recipes share: base model, the shortcut (stage-2) data, fresh image-dependent data."""

    model: str
    shortcut: str
    fresh: str


def planted_recipes(data: PlantedData, *, seed: int = 0, steps: int = 300, lr: float = 1e-3, batch_size: int = 32,
                    threads: int | None = None) -> dict[str, PlantedConfig]:
    """cause -> recipe, every one with the same steps, lr, batch size and seed (fixed before any run)."""
    common = dict(model=data.model, seed=seed, max_steps=steps, lr=lr, batch_size=batch_size, threads=threads)
    out = {cause: PlantedConfig(name=cause, train_manifest=data.shortcut, trains=TRAINS[cause], **common)
           for cause in CAUSES}
    out["decoder"] = replace(out["decoder"], images="blank")
    out["null"] = replace(out["null"], train_manifest=data.fresh, holdout=0)
    return out


def organism_data(organism_dir: str | Path, *, seed: int = 0) -> PlantedData:
    """The recipes' data for a built organism: its base, its stage-2 data, and fresh data generated beside it."""
    from probe.data.synth import SynthConfig, generate

    org = Path(organism_dir).resolve()
    record = json.loads((org / "organism.json").read_text())
    fresh = org / "planted_fresh" / "stage1_train.jsonl"
    if not fresh.is_file():  # another seed's scenes: images base never saw
        synth = SynthConfig(**record["config"]["synth"])
        generate(org / "planted_fresh", seed=seed + 10_000, config=synth)
    return PlantedData(model=str(org / "base"), shortcut=str(org / record["manifests"]["stage2_train"]),
                       fresh=str(fresh))


def training_examples(config: PlantedConfig) -> list[Example]:
    """The recipe's examples: its question types, minus the held-out tail, blank images when asked."""
    keep = set(config.question_types)
    examples = [e for e in read_manifest(config.train_manifest) if e.question_type in keep]
    if config.holdout:
        examples = examples[:-config.holdout]
    if config.images == "blank":
        with Image.open(examples[0].image) as first:
            size = first.size
        black = Image.new("RGB", size, (0, 0, 0))
        examples = [replace(e, image=black) for e in examples]
    return examples


def train_planted(config: PlantedConfig, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Fine-tune the base with only `config.trains` free; writes out_dir/model and out_dir/planted.yaml.

    Raises when a parameter outside `trains` moved (the cause would not be known). A finished run is reused.
    """
    out = Path(out_dir)
    final = out / "model"
    if (final / "config.json").is_file() and (out / CONFIG_FILE).is_file() and load_config(out / CONFIG_FILE) == config:
        return final
    adapter = load_model(config.model)
    free = parameters_of(adapter, config.trains)
    held = {q: p for q, p in adapter.base_model.named_parameters() if q not in free}
    before = {q: p.detach().clone() for q, p in held.items()}
    coarse = _frozen_groups(adapter, free)
    hooks = [p.register_hook(torch.zeros_like) for p in held.values()]
    cfg = SFTConfig(lr=config.lr, batch_size=config.batch_size, max_steps=config.max_steps, seed=config.seed,
                    threads=config.threads, device="cpu", checkpoint_every=10**9, log_every=10, freeze=coarse)
    try:
        sft(adapter, training_examples(config), cfg, out / "run", resume=False, progress=progress)
    finally:
        for h in hooks:
            h.remove()
    moved = [q for q, p in held.items() if not torch.equal(p.detach(), before[q])]
    if moved:
        raise RuntimeError(f"planted {config.name!r}: {len(moved)} parameters outside {config.trains} moved ({moved[0]})")
    shutil.rmtree(final, ignore_errors=True)
    shutil.move(str(out / "run" / "final"), str(final))
    save_config(config, out / CONFIG_FILE)
    return final


def _frozen_groups(adapter, free: dict) -> tuple[str, ...]:
    """The coarse SFT freeze groups none of whose parameters are free (saves their backward pass)."""
    from train.sft.freeze import component_parameters

    out = []
    for group in ("vision", "projector", "embeddings"):
        ids = {id(p) for p in component_parameters(adapter, group)}
        if not ids & {id(p) for p in free.values()}:
            out.append(group)
    return tuple(out)


def verify(base: str | Path, variant: str | Path, config: PlantedConfig, examples: list[Example], *,
           batch_size: int = 64) -> dict:
    """Korean/English visual dependence of base, the variant, and the variant with base's `trains` swapped back.

    Independent of any diagnosis: the cause is restored by construction and sight must come back with it.
    """
    from probe.eval.dependence import evaluate_dependence

    def vd(adapter) -> dict[str, float]:
        ds = evaluate_dependence(adapter, examples, batch_size=batch_size, progress=False)
        return {lang: float(ds["visual_dependence"].sel(lang=lang, question_type="all")) for lang in ("en", "ko")}

    b, v = load_model(base), load_model(variant)
    out = {"base": vd(b), "variant": vd(v)}
    with swapped(v, b, config.trains):
        out["restored"] = vd(v)
    share = out["variant"]["ko"] / out["base"]["ko"] if out["base"]["ko"] else float("nan")
    out["ko_share_kept"] = share
    out["blind"] = share <= BLIND_SHARE
    out["sighted"] = share >= NULL_SHARE
    out["restores"] = out["restored"]["ko"] >= NULL_SHARE * out["base"]["ko"]
    return out


def save_config(config: PlantedConfig, path: str | Path) -> Path:
    """Write the recipe as YAML, paths relative to the file's folder."""
    path = Path(path)
    data = asdict(config)
    for key in ("model", "train_manifest"):
        data[key] = str(Path(_rel(data[key], path.parent)))
    for key in ("trains", "question_types"):
        data[key] = list(data[key])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_config(path: str | Path) -> PlantedConfig:
    """Read a recipe written by save_config; unknown keys are refused in one line."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(PlantedConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for key in ("model", "train_manifest"):
        if key in data:
            data[key] = str((path.parent / data[key]).resolve())
    return PlantedConfig(**data)


def _rel(target: str, folder: Path) -> str:
    import os

    return os.path.relpath(Path(target).resolve(), folder.resolve())
