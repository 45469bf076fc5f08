"""The experiment runner: a grid of interventions × parameters × seeds over a manifest -> an xarray dataset in zarr.

    run_grid("grid.yaml", "runs/exp1")            # the same as `interventions run grid.yaml --out runs/exp1`

grid.yaml:

    model: runs/organism/ko_ft
    donor: runs/organism/base            # optional: a second checkpoint, for swaps
    manifest: runs/organism/data/eval_image.jsonl
    seeds: [0, 1, 2]                     # given to interventions that take a seed (noise, contrastive, ...)
    attention: true                      # optional: the last prompt token's visual attention share per layer
    interventions:
      - {name: boost, params: {alpha: [0.2, 0.5], layers: [2, 0]}}
      - {name: knockout, params: {layers: [[0, 1, 2, 3]]}}
      - {name: swap, params: {components: [[projector], ["lm.layer.0:2"]]}}
      - {name: contrastive, params: {alpha: [0, 1], beta: [0.1]}}
      - {name: image, params: {kind: [blank, shuffle]}}       # input-side ablation

Each parameter lists its values; conditions are their product (times the seeds where the intervention takes
one), plus the unedited baseline `none`. Per example and condition the dataset holds the correct answer's
log-probability, whether the top-ranked candidate is correct, whether shown another example's image the model
follows that image's answer, and visual dependence (both); with `attention`, also the visual share of the last
prompt token's attention per layer under the edit (NaN for two-pass edits). Results are written chunk by chunk; a killed run
started again with the same grid continues where it stopped (each chunk is written, then marked done, so no
example is lost or counted twice). The frozen config is saved beside the results (`grid.json`).
"""

from __future__ import annotations

import inspect
import itertools
import json
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from probe.progress import progress_bar

from interventions.ablation import IMAGE_ABLATIONS, VisualTokenAblation, ablate_examples, open_image, visual_token_mean
from interventions.base import Intervention, intervention_class, make_intervention
from interventions.score import rank_answers
from probe.data.example import Example
from probe.eval import mismatch_partners
from probe.eval.predict import normalise
from probe.models.base import ModelAdapter

IMAGE = "image"  # the input-side ablation entry of a grid
RESULTS = "results.zarr"
CONFIG = "grid.json"


@dataclass(frozen=True)
class InterventionGrid:
    """One intervention and the values of each parameter (their product is swept)."""

    name: str
    params: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name != IMAGE:
            intervention_class(self.name)  # unknown name: one-line KeyError listing the known ones
        fixed = {}
        for key, values in self.params.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"intervention {self.name!r}: parameter {key!r} must list its values, got {values!r}")
            fixed[key] = tuple(_freeze(v) for v in values)
        object.__setattr__(self, "params", fixed)
        if self.name == IMAGE:
            bad = [k for k in fixed.get("kind", ()) if k not in IMAGE_ABLATIONS]
            if "kind" not in fixed or bad:
                raise ValueError(f"image ablation needs kind among {', '.join(IMAGE_ABLATIONS)}, got {fixed.get('kind')}")

    def conditions(self, seeds: Sequence[int]) -> list[dict[str, Any]]:
        """Every parameter combination (with each seed if the intervention takes one)."""
        keys = list(self.params)
        takes_seed = self.name == IMAGE or "seed" in inspect.signature(intervention_class(self.name)).parameters
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.params[k] for k in keys))]
        if takes_seed and "seed" not in keys:
            combos = [dict(c, seed=s) for c in combos for s in seeds]
        return combos


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


@dataclass(frozen=True)
class GridConfig:
    """What a run sweeps (saved as grid.json beside the results)."""

    model: str
    manifest: str
    interventions: tuple[InterventionGrid, ...] = ()
    donor: str | None = None
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    chunk_examples: int = 8
    device: str = "cpu"
    langs: tuple[str, ...] | None = None
    max_examples: int | None = None
    attention: bool = False  # also record the last prompt token's visual attention share per layer (head mean)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interventions", tuple(
            g if isinstance(g, InterventionGrid) else InterventionGrid(g["name"], dict(g.get("params", {})))
            for g in self.interventions))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.langs is not None:
            object.__setattr__(self, "langs", tuple(self.langs))
        if not self.seeds:
            raise ValueError("grid: seeds must not be empty")
        if self.batch_size < 1 or self.chunk_examples < 1:
            raise ValueError(f"grid: batch_size and chunk_examples must be >= 1, got {self.batch_size}, {self.chunk_examples}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"grid: max_examples must be >= 1, got {self.max_examples}")
        needs = [g.name for g in self.interventions if g.name != IMAGE and intervention_class(g.name).needs_donor]
        if needs and self.donor is None:
            raise ValueError(f"grid: intervention {needs[0]!r} needs a donor checkpoint (add `donor:`)")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "GridConfig":
        """Read a grid file; relative model / manifest paths are taken relative to the file."""
        import yaml

        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"{path}: unknown grid field {sorted(unknown)[0]!r}")
        for key in ("model", "manifest", "donor"):
            if raw.get(key) is not None and (path.parent / raw[key]).exists():
                raw[key] = str((path.parent / raw[key]).resolve())
        return cls(**raw)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["interventions"] = [{"name": g.name, "params": {k: [_thaw(v) for v in vals] for k, vals in g.params.items()}}
                              for g in self.interventions]
        return json.loads(json.dumps(d))

    def conditions(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(label, intervention name, parameters) of every condition, the baseline `none` first."""
        out = [("none", "none", {})]
        for g in self.interventions:
            for params in g.conditions(self.seeds):
                label = g.name + "(" + ",".join(f"{k}={json.dumps(_thaw(v))}" for k, v in params.items()) + ")"
                out.append((label, g.name, params))
        labels = [c[0] for c in out]
        dup = next((lab for lab in labels if labels.count(lab) > 1), None)
        if dup:
            raise ValueError(f"grid: condition {dup!r} appears twice")
        return out


def run_grid(
    grid: GridConfig | str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    adapters: tuple[ModelAdapter, ModelAdapter | None] | None = None,
    after_chunk: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Run (or resume) a grid into folder `out`; returns the dataset (also at out/results.zarr).

    adapters: already-loaded (model, donor) instead of loading the grid's paths; after_chunk(i): called after
    chunk i is stored (tests use it to kill the process mid-run).
    """
    config = grid if isinstance(grid, GridConfig) else GridConfig.from_yaml(grid)
    out = Path(out)
    saved = out / CONFIG
    if saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        if before != config.to_json():
            raise ValueError(f"{out}: holds a run of another grid ({saved}); choose a new --out or the same grid")
    examples = _examples(config)
    out.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        saved.write_text(json.dumps(config.to_json(), indent=2), encoding="utf-8")
    conditions = config.conditions()
    model, donor = adapters if adapters is not None else _load(config)
    store = out / RESULTS
    if not store.exists():  # written aside, then renamed: a kill while creating it leaves no half-made store
        chunks = {"chunks": (1, config.chunk_examples)}  # one zarr chunk per (condition, example chunk) written
        tmp = out / (RESULTS + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        template = _template(examples, conditions, config, model.num_layers)
        encoding = {v: chunks for v in (*VARIABLES, "done")}
        if config.attention:
            encoding["visual_attention"] = {"chunks": (1, config.chunk_examples, model.num_layers)}
        template.to_zarr(tmp, mode="w", consolidated=False, encoding=encoding)
        tmp.rename(store)
    done = xr.open_zarr(store, consolidated=False)["done"].values.copy()
    partners = mismatch_partners(examples, 0)
    chunks = [slice(s, min(s + config.chunk_examples, len(examples))) for s in range(0, len(examples), config.chunk_examples)]
    todo = [(c, sl) for c in range(len(conditions)) for sl in chunks if not done[c, sl].all()]
    cache: dict[str, Any] = {}
    bar = progress_bar(total=len(conditions) * len(chunks), initial=len(conditions) * len(chunks) - len(todo), desc="grid",
               disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for i, (c, sl) in enumerate(todo):
        label, name, params = conditions[c]
        values = _evaluate(model, donor, name, params, examples, partners, sl, config, cache)
        region = xr.Dataset({k: (("condition", "example", "layer")[: v.ndim + 1], v[None]) for k, v in values.items()})
        region.to_zarr(store, region={"condition": slice(c, c + 1), "example": sl}, consolidated=False)
        marker = xr.Dataset({"done": (("condition", "example"), np.ones((1, sl.stop - sl.start), dtype=bool))})
        marker.to_zarr(store, region={"condition": slice(c, c + 1), "example": sl}, consolidated=False)
        bar.update()
        if after_chunk is not None:
            after_chunk(i)
    bar.close()
    return xr.open_zarr(store, consolidated=False).load()


def _examples(config: GridConfig) -> list[Example]:
    from probe.data.manifest import read_manifest

    examples = [e for e in read_manifest(config.manifest) if e.answer is not None]
    if config.langs is not None:
        examples = [e for e in examples if e.lang in config.langs]
    if config.max_examples is not None:
        examples = examples[: config.max_examples]
    if not examples:
        raise ValueError(f"{config.manifest}: no examples with answers (after the grid's filters)")
    opened = []
    for e in examples:
        try:
            opened.append(replace(e, image=open_image(e)))
        except OSError as err:  # missing or corrupt image: one line naming the example, before anything is written
            raise ValueError(f"{config.manifest}: example {e.id!r}: cannot open image {e.image}: {err}") from None
    return opened


def _load(config: GridConfig) -> tuple[ModelAdapter, ModelAdapter | None]:
    from probe.models import load_model

    model = load_model(config.model, device=config.device)
    donor = load_model(config.donor, device=config.device) if config.donor else None
    return model, donor


VARIABLES = ("logprob", "correct", "follows_mismatched", "visually_dependent")


def _template(examples: list[Example], conditions: list, config: GridConfig, n_layers: int) -> xr.Dataset:
    shape = (len(conditions), len(examples))
    data = {k: (("condition", "example"), np.full(shape, np.nan)) for k in VARIABLES}
    if config.attention:
        data["visual_attention"] = (("condition", "example", "layer"), np.full((*shape, n_layers), np.nan))
    data["done"] = (("condition", "example"), np.zeros(shape, dtype=bool))
    coords = {
        "condition": [c[0] for c in conditions],
        "intervention": ("condition", [c[1] for c in conditions]),
        "params": ("condition", [json.dumps({k: _thaw(v) for k, v in c[2].items()}) for c in conditions]),
        "example": [e.id for e in examples],
        "example_lang": ("example", [e.lang for e in examples]),
        "example_question_type": ("example", [e.question_type for e in examples]),
        "example_image_dependent": ("example", [e.needs_image for e in examples]),
        "example_group": ("example", [str(getattr(e, "group", None) or _image_key(e)) for e in examples]),
    }
    if config.attention:
        coords["layer"] = np.arange(n_layers)
    ds = xr.Dataset(data, coords=coords, attrs={"grid": json.dumps(config.to_json())})
    for name in ("condition", "intervention", "params", "example", "example_lang", "example_question_type", "example_group"):
        ds[name] = ds[name].astype(str).astype(object)
    return ds


def _image_key(ex: Example) -> str:
    import hashlib

    return hashlib.sha1(open_image(ex).tobytes()).hexdigest()[:16]


def _evaluate(model, donor, name, params, examples, partners, sl, config, cache) -> dict[str, np.ndarray]:
    """The four per-example variables of one condition over the examples in `sl`."""
    from probe.eval.candidates import plan_candidates

    idx = list(range(sl.start, sl.stop))
    real = [examples[i] for i in idx]
    other = [examples[partners[i]] if partners[i] is not None else None for i in idx]
    intervention: Intervention | None = None
    if name == IMAGE:
        key = ("image", params["kind"], params.get("seed", 0))
        if key not in cache:  # over the whole set: "mean" and "other" need it
            cache[key] = ablate_examples(examples, params["kind"], seed=params.get("seed", 0))
        real = [cache[key][i] for i in idx]
    elif name != "none":
        kw = {k: _thaw(v) for k, v in params.items()}
        if name == VisualTokenAblation.name and kw.get("mode") == "mean":
            if "visual_mean" not in cache:
                cache["visual_mean"] = visual_token_mean(model, examples, batch_size=config.batch_size)
            kw["mean"] = cache["visual_mean"]
        intervention = make_intervention(name, model, donor, **kw)
    # the correct answer's log-probability, and every candidate's under the real and the mismatched image
    if "plans" not in cache:  # candidates from the user's data, planned over the whole manifest (as probe eval does)
        cache["plans"] = plan_candidates(examples)
    choices = [cache["plans"][i].choices for i in idx]
    cands = [c if c else [e.answer] for c, e in zip(choices, real)]
    mism = [replace(e, image=o.image) if o is not None else e for e, o in zip(real, other)]
    preds, scores = rank_answers(model, real + mism, cands + cands, intervention, batch_size=config.batch_size)
    n = len(idx)
    logprob = np.array([s[c.index(e.answer)] for s, c, e in zip(scores[:n], cands, real)])
    has = np.array([bool(c) for c in choices])
    correct = np.where(has, [normalise(p) == normalise(e.answer) for p, e in zip(preds[:n], real)], np.nan)
    follows = np.array([np.nan if (o is None or not h) else float(normalise(p) == normalise(o.answer))
                        for p, o, h in zip(preds[n:], other, has)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dependent = np.where(np.isnan(follows) | np.isnan(correct), np.nan, correct * follows)
    out = {"logprob": logprob, "correct": correct.astype(float), "follows_mismatched": follows, "visually_dependent": dependent}
    if config.attention:
        out["visual_attention"] = _visual_attention(model, real, intervention, config.batch_size)
    return out


def _visual_attention(model: ModelAdapter, examples: list[Example], intervention: Intervention | None,
                      batch_size: int) -> np.ndarray:
    """[n, layer]: the last prompt token's attention share on visual tokens, mean over heads, under the intervention
    (recorded inside the attention call, entered before the intervention so it sees the edited attention); NaN for
    interventions that run two forwards per call (contrastive, AdaptVis)."""
    import torch

    from probe.capture.attention import AttentionRecorder
    from probe.segments import Segment

    out = np.full((len(examples), model.num_layers), np.nan)
    if intervention is not None and intervention.forward_passes > 1:
        return out
    recorder = AttentionRecorder(model.attention_modules, range(model.num_layers), shares=True, rows=False)
    device = next(model.model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = model.build_inputs(examples[start : start + batch_size], padding_side="right").to(device)
        recorder.set_batch(batch.segments)
        with torch.no_grad(), recorder:
            if intervention is not None:
                intervention.set_batch(batch)
                with intervention:
                    model.model(**batch.inputs)
            else:
                model.model(**batch.inputs)
        share = torch.stack([recorder.results[i].share[:, :, 0, int(Segment.VISUAL)] for i in range(model.num_layers)])
        out[start : start + len(batch.segments)] = share.float().mean(-1).T.cpu().numpy()  # [layer, b, head] -> [b, layer]
    return out


def summarise(ds: xr.Dataset, *, by: str = "example_lang", n_boot: int = 1000, seed: int = 0) -> xr.Dataset:
    """Per condition × `by`: mean accuracy and visual dependence (image-dependent examples) and accuracy on
    text-answerable ones, each with a 95% bootstrap interval over groups (an image asked twice is one unit)."""
    from probe.analysis.stats import BootstrapConfig, bootstrap_scalar_ci

    cfg = BootstrapConfig(n_boot=n_boot, seed=seed)
    levels = sorted(set(ds[by].values.tolist()))
    stats = {"visual_dependence": ("visually_dependent", True), "accuracy_image": ("correct", True),
             "accuracy_text": ("correct", False)}
    out = {f"{k}{s}": np.full((ds.sizes["condition"], len(levels)), np.nan) for k in stats for s in ("", "_low", "_high")}
    dep = ds["example_image_dependent"].values.astype(bool)
    groups = ds["example_group"].values
    for c in range(ds.sizes["condition"]):
        for j, level in enumerate(levels):
            for key, (var, image) in stats.items():
                m = (ds[by].values == level) & (dep == image)
                vals = ds[var].values[c, m]
                per_group = [np.nanmean(vals[groups[m] == g]) if np.isfinite(vals[groups[m] == g]).any() else np.nan
                             for g in dict.fromkeys(groups[m])]
                mean, lo, hi = bootstrap_scalar_ci(np.asarray(per_group, dtype=float), cfg)
                out[key][c, j], out[f"{key}_low"][c, j], out[f"{key}_high"][c, j] = mean, lo, hi
    return xr.Dataset({k: (("condition", by), v) for k, v in out.items()},
                      coords={"condition": ds["condition"].values, by: levels})
