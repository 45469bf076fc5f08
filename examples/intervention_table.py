"""Issue 11's acceptance table on one organism seed: which intervention restores how much of the fine-tuned
model's visual dependence, at what cost to its Korean text-answerable accuracy; swaps; the patching heatmap.

    python examples/intervention_table.py --organism runs/quickstart --seed 0 --out runs/iv_table/seed0
    python examples/intervention_table.py --aggregate runs/iv_table/seed0 runs/iv_table/seed1 runs/iv_table/seed2 \
        --out runs/iv_table/summary

Per seed (organism built by `train quickstart` / `train.organism.build_organism`; read only):
1. Two recipients: the organism's `ko_ft` (its full stage-2 Korean fine-tune, vision tower included) and
   `ko_ft_vfrozen`: base fine-tuned on the same stage-2 data, steps, lr, batch and seed with the vision tower
   frozen (projector + decoder trained), saved under --out and reused when present.
2. A fixed subset chosen before any result (SUBSET_RULE below).
3. Conditions on each recipient (CONDITIONS), run by `interventions.run_grid`; visual dependence (VD) per
   language as % of base's and Korean text-answerable accuracy, 95% intervals resampling images
   (`train.mitigate.table.grouped_ratio`: an image asked in English and Korean is one unit).
   Positive controls on base (CONTROLS): visual-key knockout must bring VD to chance level and every no-op
   must equal `none` bit for bit — the script raises ControlFailed otherwise.
4. `interventions.patch_sweep` at the residual stream, layers × {visual, text, last prompt} (+ the projector
   output): base -> each recipient and real -> blank image on base; the normalised effect on the correct
   answer's log-prob with intervals over images, as a PNG.
5. table.txt, rows.json, heatmap.png under --out. `--aggregate` puts several seeds' rows.json into one table
   and one heatmap (mean over seeds, each seed's value beside it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from interventions import VAR, ablate_examples, patch_sweep, run_grid
from interventions.runner import GridConfig, InterventionGrid
from probe.analysis._io import to_str
from probe.analysis.sinks import find_sink_dims
from probe.analysis.stats import BootstrapConfig
from probe.data.example import Example
from probe.data.manifest import read_manifest, write_manifest
from probe.eval.candidates import plan_candidates
from probe.models.loading import load_model
from probe.segments import Segment
from train.mitigate.table import grouped_ratio
from train.organism import OrganismConfig, existing_organism

N_IMAGES, N_TEXT = 40, 40
SUBSET_RULE = (f"eval_image.jsonl in file order, the organism's question types only: the first {N_IMAGES} images "
               f"(each asked in en and ko); eval_text.jsonl in file order: the first {N_TEXT} Korean text-answerable "
               "questions of the organism's question types")
LANGS = ("ko", "en")
SEGMENTS = ("visual", "text", "last_prompt")
RECIPIENTS = ("ko_ft", "ko_ft_vfrozen")


class ControlFailed(RuntimeError):
    """A positive control or a no-op check did not hold: the table would not mean what it says."""


# --- what is run --------------------------------------------------------------------------------------------
def conditions(n_layers: int, sink_dims: list[int]) -> list[tuple[str, str, dict]]:
    """(row label, intervention, parameters) on each recipient, donor = base; `none` comes first in the run."""
    return [
        ("PAI boost a=0.2 (L2+, last query)", "boost", {"alpha": [0.2]}),
        ("boost a=0.5", "boost", {"alpha": [0.5]}),
        ("boost a=1.0", "boost", {"alpha": [1.0]}),
        ("temperature x0.5 (AdaptVis w1)", "temperature", {"scale": [0.5]}),
        ("temperature x1.2 (AdaptVis w2)", "temperature", {"scale": [1.2]}),
        ("AdaptVis (0.5/1.2, thr 0.3)", "adaptvis", {}),
        ("VAR p=0.6 moved (paper)", "var", {"p": [0.6], "sink_dims": [sink_dims]}),
        ("VAR p=0.4 moved (code's 0.6)", "var", {"p": [0.4], "sink_dims": [sink_dims]}),
        ("VCD a=1 b=0.1", "contrastive", {"alpha": [1.0], "beta": [0.1], "contrast": ["noise"]}),
        ("text prior g=1.1 b=0.1", "contrastive", {"alpha": [0.1], "beta": [0.1], "contrast": ["no_image"]}),
        ("cut-off only b=0.1", "contrastive", {"alpha": [0.0], "beta": [0.1]}),
        ("swap projector", "swap", {"components": [["projector"]]}),
        ("swap vision", "swap", {"components": [["vision"]]}),
        ("swap vision+projector", "swap", {"components": [["vision", "projector"]]}),
        ("swap embed", "swap", {"components": [["embed"]]}),
        ("swap decoder 0:2", "swap", {"components": [["lm.layer.0:2"]]}),
        ("swap decoder 2:4", "swap", {"components": [[f"lm.layer.2:{n_layers}"]]}),
        ("swap decoder 0:4", "swap", {"components": [[f"lm.layer.0:{n_layers}"]]}),
    ]


def controls(n_layers: int, sink_dims: list[int]) -> list[tuple[str, str, dict]]:
    """Positive control and no-ops on base (donor = a second copy of base)."""
    return [
        ("knockout visual keys (all text queries, all layers)", "knockout",
         {"layers": [list(range(n_layers))], "queries": [["text", "last_prompt", "answer"]]}),
        ("no-op: boost a=0", "boost", {"alpha": [0.0]}),
        ("no-op: VAR p=0", "var", {"p": [0.0], "sink_dims": [sink_dims]}),
        ("no-op: self-swap all", "swap", {"components": [["all"]]}),
    ]


def grid(model: Path, donor: Path, manifest: Path, conds: Sequence[tuple[str, str, dict]]) -> GridConfig:
    """One InterventionGrid per row, so the run's condition i + 1 is row i (condition 0 is `none`)."""
    return GridConfig(model=str(model), donor=str(donor), manifest=str(manifest), seeds=(0,), batch_size=40,
                      chunk_examples=40, interventions=tuple(InterventionGrid(name, params) for _, name, params in conds))


# --- inputs -------------------------------------------------------------------------------------------------
def subset(org: Path, record: dict) -> list[Example]:
    """SUBSET_RULE, from the organism's manifests (image paths made absolute)."""
    keep = set(record["config"]["question_types"])
    image = [e for e in read_manifest(org / record["manifests"]["eval_image"]) if e.question_type in keep]
    chosen = list(dict.fromkeys(str(e.image) for e in image))[:N_IMAGES]
    rows = [e for e in image if str(e.image) in set(chosen)]
    text = [e for e in read_manifest(org / record["manifests"]["eval_text"])
            if e.lang == "ko" and not e.image_dependent and e.question_type in keep][:N_TEXT]
    langs = {e.lang for e in rows}
    if len(chosen) < N_IMAGES or len(text) < N_TEXT or langs != set(LANGS):
        raise SystemExit(f"{org}: the subset rule needs {N_IMAGES} images in en and ko and {N_TEXT} Korean "
                         f"text-answerable questions; found {len(chosen)} images ({sorted(langs)}), {len(text)} questions")
    return [replace(e, image=str(Path(e.image).resolve())) for e in rows + text]


def train_vfrozen(org: Path, record: dict, out: Path, progress: bool) -> Path:
    """base fine-tuned on the organism's stage-2 data with its stage-2 recipe, vision tower frozen (reused if saved)."""
    from train.sft import SFTConfig, sft

    dst = out / "ko_ft_vfrozen"
    if (dst / "config.json").is_file():
        return dst
    cfg = record["config"]
    keep = set(cfg["question_types"])
    stage2 = [e for e in read_manifest(org / record["manifests"]["stage2_train"]) if e.question_type in keep]
    adapter = load_model(org / "base")
    steps = record.get("stages", {}).get("stage2", {}).get("steps", cfg["stage2_steps"])  # steps stage 2 took
    sft_cfg = SFTConfig(lr=cfg["stage2_lr"], max_steps=steps, batch_size=cfg["batch_size"], threads=1,
                        seed=record["seed"], device="cpu", checkpoint_every=10**9, log_every=10, freeze=("vision",))
    sft(adapter, stage2, sft_cfg, out / "train_vfrozen", resume=False, progress=progress)
    shutil.move(str(out / "train_vfrozen" / "final"), str(dst))
    return dst


@torch.no_grad()
def sink_dims_of(adapter, examples: Sequence[Example]) -> list[int]:
    """Massive-activation dimensions of the model's residual stream on these examples (probe.analysis.sinks)."""
    import xarray as xr

    batch = adapter.build_inputs(list(examples), padding_side="right")
    hidden = adapter.model(**batch.inputs, output_hidden_states=True).hidden_states[1:]  # after each layer
    h = torch.stack(hidden, 1).float().numpy()  # [example, layer, position, feature]
    seg = batch.segments.numpy().astype(np.int8)
    seg[seg == Segment.PAD] = -1
    ds = xr.Dataset({"hook_resid_post_tokens": (("example", "layer", "position", "feature"), h),
                     "segment_ids": (("example", "position"), seg)})
    return [int(d) for d in find_sink_dims(ds).values]


class _CountingVAR(VAR):
    """VAR that counts the visual sink tokens it detects and the (layer, head) pairs whose attention it changes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sink_tokens: list[float] = []
        self.changed: set[tuple[int, int]] = set()

    def edit(self, logits, visual, layer, rows):
        out = super().edit(logits, visual, layer, rows)
        sinks = self._detected[layer].to(visual.device) & visual[:, 0, 0]
        self.sink_tokens.append(float(sinks.sum(-1).float().mean()))
        moved = (out - torch.softmax(logits, -1)).abs().amax(-1).amax(-1) > 0  # [batch, edited head]
        self.changed |= {(layer, self.heads[h]) for h in moved.any(0).nonzero().flatten().tolist()}
        return out


@torch.no_grad()
def var_activity(adapter, examples: Sequence[Example], sink_dims: list[int]) -> dict:
    """What VAR (p=0.6, the paper's value) finds on these examples: sink dims, sink tokens, heads it changes."""
    info = {"sink_dims": sink_dims, "visual_sink_tokens_per_example_layer": 0.0, "heads_changed": [],
            "n_heads_total": adapter.num_layers * adapter.num_heads}
    if not sink_dims:
        info["note"] = "no massive-activation dimension: VAR is a no-op on this model"
        return info
    edit = _CountingVAR(adapter, p=0.6, sink_dims=sink_dims)
    batch = adapter.build_inputs(list(examples), padding_side="right")
    edit.set_batch(batch)
    with edit:
        adapter.model(**batch.inputs)
    info["visual_sink_tokens_per_example_layer"] = float(np.mean(edit.sink_tokens)) if edit.sink_tokens else 0.0
    info["heads_changed"] = sorted([list(x) for x in edit.changed])
    return info


# --- statistics (probe / train helpers; nothing re-derived here) ---------------------------------------------
def _mask(ds, lang: str, image_dependent: bool) -> np.ndarray:
    return (to_str(ds["example_lang"].values) == lang) & (ds["example_image_dependent"].values.astype(bool) == image_dependent)


def condition_metrics(ds, c: int, base_vd: np.ndarray, boot: BootstrapConfig) -> dict:
    """VD per language (raw and % of base's `none`) and Korean text-answerable accuracy of condition c."""
    groups = to_str(ds["example_group"].values)
    row = {}
    for lang in LANGS:
        vd = ds["visually_dependent"].values[c]
        m = _mask(ds, lang, True) & np.isfinite(vd) & np.isfinite(base_vd)
        row[f"{lang}_vd"] = list(grouped_ratio(vd[m], np.ones(m.sum()), groups[m], boot))
        pct = grouped_ratio(vd[m], base_vd[m], groups[m], boot)
        row[f"{lang}_vd_pct"] = [100 * v for v in pct]
    m = _mask(ds, "ko", False)
    correct = ds["correct"].values[c][m]
    row["ko_text_acc"] = list(grouped_ratio(correct, np.ones(m.sum()), groups[m], boot))
    return row


def check_controls(ds, labels: Sequence[str], n_choices: int, boot: BootstrapConfig) -> list[dict]:
    """Rows of the control run; raises ControlFailed unless knockout VD is at chance and each no-op equals none."""
    none_vd = ds["visually_dependent"].values[0]
    rows = [{"condition": "base: none", **condition_metrics(ds, 0, none_vd, boot)}]
    chance = 1.0 / n_choices**2  # a guesser ignoring the image, uniform over the candidates, per image independently
    for c, label in enumerate(labels, start=1):
        row = {"condition": f"base: {label}", **condition_metrics(ds, c, none_vd, boot)}
        rows.append(row)
        if label.startswith("knockout"):
            for lang in LANGS:
                if not row[f"{lang}_vd"][0] <= chance:
                    raise ControlFailed(f"knockout on base left {lang} VD {row[f'{lang}_vd'][0]:.3f} > chance {chance:.3f}")
                if not row[f"{lang}_vd"][2] < rows[0][f"{lang}_vd"][1]:
                    raise ControlFailed(f"knockout on base: {lang} VD interval overlaps base's own")
        else:
            for var in ("logprob", "correct", "visually_dependent"):
                a, b = ds[var].values[0], ds[var].values[c]
                if not np.array_equal(a, b, equal_nan=True):
                    raise ControlFailed(f"{label}: {var} differs from none (max |diff| {np.nanmax(np.abs(a - b)):.3g})")
    return rows


# --- patching -----------------------------------------------------------------------------------------------
def patch_effects(sweep, groups: np.ndarray, langs: np.ndarray, boot: BootstrapConfig) -> dict:
    """Per language: normalised effect [layer][segment] and projector effect as (mean, low, high) over images."""
    clean, corrupt = sweep["clean"].values, sweep["corrupt"].values
    patched = sweep["patched"].sel(site="resid").values  # [layer, segment, example]
    out = {}
    for lang in LANGS:
        m = langs == lang
        den = clean[m] - corrupt[m]
        cells = [[list(grouped_ratio(patched[i, j, m] - corrupt[m], den, groups[m], boot)) for j in range(patched.shape[1])]
                 for i in range(patched.shape[0])]
        proj = list(grouped_ratio(sweep["projector"].values[m] - corrupt[m], den, groups[m], boot))
        out[lang] = {"effect": cells, "projector": proj, "gap": float(den.mean())}
    return out


PAIRS = {"base->ko_ft": "patch base into ko_ft", "base->ko_ft_vfrozen": "patch base into ko_ft_vfrozen",
         "real->blank (base)": "base, real image patched into blank image"}


def heatmap(patching: dict, title: str, path: Path, per_seed: dict | None = None) -> None:
    """PNG: one panel per (pair, language), rows projector output + residual after each layer, columns segments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(patching)
    fig, axes = plt.subplots(len(pairs), len(LANGS), figsize=(5.4 * len(LANGS) + 1.5, 3.9 * len(pairs)),
                             squeeze=False, constrained_layout=True)
    cmap = plt.get_cmap("RdBu_r").copy()
    cmap.set_bad("0.85")
    seg_names = ["visual tokens", "prompt text", "last prompt token"]
    for r, pair in enumerate(pairs):
        for k, lang in enumerate(LANGS):
            ax, cell = axes[r, k], patching[pair][lang]
            eff = np.array(cell["effect"], dtype=float)  # [layer, segment, 3]
            n_layers = eff.shape[0]
            grid_ = np.full((n_layers + 1, len(SEGMENTS), 3), np.nan)
            grid_[0, 0] = cell["projector"]
            grid_[1:] = eff
            im = ax.imshow(np.clip(grid_[..., 0], -1, 1), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
            for i in range(n_layers + 1):
                for j in range(len(SEGMENTS)):
                    pt, lo, hi = grid_[i, j]
                    if not np.isfinite(pt):
                        continue
                    text = f"{pt:.2f}\n[{lo:.2f}, {hi:.2f}]" if per_seed is None else \
                        f"{pt:.2f}\n(" + " / ".join(f"{v:.2f}" for v in per_seed[pair][lang][i][j]) + ")"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7.5,
                            color="white" if abs(pt) > 0.6 else "black")
            ax.set_xticks(range(len(SEGMENTS)), seg_names)
            ax.set_yticks(range(n_layers + 1), ["projector output"] + [f"after layer {i}" for i in range(n_layers)])
            ax.set_xlabel("positions patched")
            ax.set_ylabel("site (image flows top to bottom)")
            lang_name = {"ko": "Korean", "en": "English"}[lang]
            ax.set_title(f"{lang_name} questions: {PAIRS.get(pair, pair)}\n"
                         f"clean - corrupt log-prob gap {cell['gap']:.2f} nats", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.6, label="normalised effect on the correct answer's log-prob\n"
                 "0 = no effect, 1 = full recovery of the clean run (colour clipped to [-1, 1])")
    fig.suptitle(title + "\ngrey: not applicable (the projector output holds visual tokens only); the prompt-text "
                 "segment includes the answer tokens", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- one seed -----------------------------------------------------------------------------------------------
def run_seed(organism: Path, seed: int, out: Path, n_boot: int = 1000, progress: bool = True) -> dict:
    """Everything for one organism; writes table.txt, rows.json, heatmap.png under out and returns the record."""
    org = organism.resolve()
    record = json.loads((org / "organism.json").read_text())
    if record["seed"] != seed:
        raise SystemExit(f"{org}: organism.json says seed {record['seed']}, not {seed}")
    matches_current = existing_organism(org, seed=seed, config=OrganismConfig()) is not None
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    boot = BootstrapConfig(n_boot=n_boot, seed=0)
    examples = subset(org, record)
    manifest = write_manifest(examples, out / "subset.jsonl")
    image_ex = [e for e in examples if e.image_dependent]
    n_choices = max(len(c.choices or ()) for c in plan_candidates(examples))
    paths = {"base": org / "base", "ko_ft": org / "ko_ft", "ko_ft_vfrozen": train_vfrozen(org, record, out, progress)}
    models = {name: load_model(p) for name, p in paths.items()}
    base = models["base"]
    frozen_ok = all(torch.equal(a, b) for a, b in zip(base.component_parameters("vision").values(),
                                                       models["ko_ft_vfrozen"].component_parameters("vision").values()))
    if not frozen_ok:
        raise ControlFailed("ko_ft_vfrozen's vision tower differs from base's: the freeze did not hold")
    n_layers = base.num_layers
    sinks = {name: sink_dims_of(models[name], image_ex) for name in ("base", *RECIPIENTS)}
    var_info = {name: var_activity(models[name], image_ex, sinks[name]) for name in ("base", *RECIPIENTS)}

    # positive controls on base
    ctl = controls(n_layers, sinks["base"])
    donor_copy = load_model(paths["base"])
    ds = run_grid(grid(paths["base"], paths["base"], manifest, ctl), out / "runs" / "base_controls",
                  adapters=(base, donor_copy), progress=progress)
    control_rows = check_controls(ds, [c[0] for c in ctl], n_choices, boot)
    base_vd = ds["visually_dependent"].values[0]

    rows = []
    for name in RECIPIENTS:
        conds = conditions(n_layers, sinks[name])
        ds = run_grid(grid(paths[name], paths["base"], manifest, conds), out / "runs" / name,
                      adapters=(models[name], base), progress=progress)
        labels = ["none"] + [c[0] for c in conds]
        for c, label in enumerate(labels):
            rows.append({"recipient": name, "condition": label, **condition_metrics(ds, c, base_vd, boot)})
        if not sinks[name]:  # VAR found nothing to move: show it equals none
            for c, label in enumerate(labels):
                if label.startswith("VAR") and not np.array_equal(ds["logprob"].values[0], ds["logprob"].values[c]):
                    raise ControlFailed(f"{name}: {label} found no sink dims yet differs from none")

    # activation patching, residual stream
    groups = np.array([str(e.image) for e in image_ex])
    langs = np.array([e.lang for e in image_ex])
    patching = {}
    for name in RECIPIENTS:
        sweep = patch_sweep(base, models[name], image_ex, sites=("resid",), segments=SEGMENTS, batch_size=16,
                            progress=progress)
        patching[f"base->{name}"] = patch_effects(sweep, groups, langs, boot)
    sweep = patch_sweep(base, base, image_ex, ablate_examples(image_ex, "blank"), sites=("resid",), segments=SEGMENTS,
                        batch_size=16, progress=progress)
    patching["real->blank (base)"] = patch_effects(sweep, groups, langs, boot)

    result = {"seed": seed, "organism": str(org), "organism_matches_current_config": matches_current,
              "subset_rule": SUBSET_RULE, "n_examples": len(examples), "n_choices": n_choices,
              "chance_vd": 1.0 / n_choices**2, "var": var_info, "controls": control_rows, "rows": rows,
              "patching": patching, "n_boot": n_boot}
    (out / "rows.json").write_text(json.dumps(result, indent=1))
    (out / "table.txt").write_text(format_table(result) + "\n")
    heatmap(patching, f"Activation patching, organism seed {seed}: residual stream, mean over {N_IMAGES} images "
            "per language, 95% interval over images", out / "heatmap.png")
    return result


# --- tables -------------------------------------------------------------------------------------------------
def _ci(v: Sequence[float], digits: int = 1) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def format_table(result: dict) -> str:
    """Controls, then per recipient: KO / EN VD % of base, KO text-answerable accuracy (95% intervals over images)."""
    head = f"{'condition':<38} {'KO VD % base':>22} {'EN VD % base':>22} {'KO text acc.':>22}"
    lines = [f"seed {result['seed']}  ({result['subset_rule']}; chance VD {result['chance_vd']:.3f})", "",
             f"{'control (base)':<56} {'KO VD':>20} {'EN VD':>20} {'KO text acc.':>20}"]
    for r in result["controls"]:
        lines.append(f"{r['condition']:<56} {_ci(r['ko_vd'], 3):>20} {_ci(r['en_vd'], 3):>20} {_ci(r['ko_text_acc'], 3):>20}")
    for v in result["var"].items():
        lines.append(f"VAR on {v[0]}: sink dims {v[1]['sink_dims']}, visual sink tokens per example and layer "
                     f"{v[1]['visual_sink_tokens_per_example_layer']:.2f}, heads changed {len(v[1]['heads_changed'])}"
                     f"/{v[1]['n_heads_total']}" + (f" ({v[1]['note']})" if "note" in v[1] else ""))
    for name in RECIPIENTS:
        lines += ["", f"recipient {name}", head, "-" * len(head)]
        for r in (r for r in result["rows"] if r["recipient"] == name):
            lines.append(f"{r['condition']:<38} {_ci(r['ko_vd_pct']):>22} {_ci(r['en_vd_pct']):>22} "
                         f"{_ci(r['ko_text_acc'], 3):>22}")
    lines += ["", "patching (residual; normalised effect, Korean | English; rows: projector output, after layer i; "
              "columns: visual, text, last prompt)"]
    for pair, per_lang in result["patching"].items():
        lines.append(f"{pair}:  gap ko {per_lang['ko']['gap']:.2f}, en {per_lang['en']['gap']:.2f} nats")
        lines.append(f"  {'projector':<12} " + " | ".join(f"{_ci(per_lang[lang]['projector'], 2):>20}" for lang in LANGS))
        for i in range(len(per_lang["ko"]["effect"])):
            cells = [" ".join(f"{_ci(c, 2):>20}" for c in per_lang[lang]["effect"][i]) for lang in LANGS]
            lines.append(f"  {'layer ' + str(i):<12} " + " | ".join(cells))
    return "\n".join(lines)


# --- several seeds ------------------------------------------------------------------------------------------
METRICS = ("ko_vd_pct", "en_vd_pct", "ko_text_acc")


def aggregate_rows(results: Sequence[dict]) -> list[dict]:
    """Per (recipient, condition) in the first seed's order: each seed's point estimate and their mean."""
    keyed = [{(r["recipient"], r["condition"]): r for r in res["rows"]} for res in results]
    out = []
    for key in keyed[0]:
        if any(key not in k for k in keyed):
            raise ValueError(f"aggregate: row {key} is missing from some seed")
        row = {"recipient": key[0], "condition": key[1], "seeds": [res["seed"] for res in results]}
        for metric in METRICS:
            points = [k[key][metric][0] for k in keyed]
            row[metric] = {"per_seed": points, "mean": float(np.mean(points))}
        out.append(row)
    return out


def aggregate_patching(results: Sequence[dict]) -> tuple[dict, dict]:
    """Mean over seeds of each heatmap cell (as (mean, min, max)) and each seed's point, for `heatmap`."""
    mean, per_seed = {}, {}
    for pair in results[0]["patching"]:
        mean[pair], per_seed[pair] = {}, {}
        for lang in LANGS:
            cells = [res["patching"][pair][lang] for res in results]
            eff = np.array([[[v[0] for v in row] for row in c["effect"]] for c in cells])  # [seed, layer, segment]
            proj = np.array([c["projector"][0] for c in cells])
            stack = np.stack([eff.mean(0), eff.min(0), eff.max(0)], -1)
            mean[pair][lang] = {"effect": stack.tolist(), "projector": [proj.mean(), proj.min(), proj.max()],
                                "gap": float(np.mean([c["gap"] for c in cells]))}
            full = np.concatenate([np.full((len(cells), 1, eff.shape[2]), np.nan), eff], 1)
            full[:, 0, 0] = proj
            per_seed[pair][lang] = np.moveaxis(full, 0, -1).tolist()  # [site row][segment][seed]
    return mean, per_seed


def format_summary(rows: Sequence[dict]) -> str:
    """Mean over seeds, each seed's value in parentheses."""
    def cell(m: dict, digits: int) -> str:
        return f"{m['mean']:.{digits}f} (" + " / ".join(f"{v:.{digits}f}" for v in m["per_seed"]) + ")"

    seeds = rows[0]["seeds"] if rows else []
    head = f"{'condition':<38} {'KO VD % base':>26} {'EN VD % base':>26} {'KO text acc.':>28}"
    lines = [f"mean over seeds {seeds} (each seed's point estimate in parentheses; per-seed intervals in each table.txt)"]
    for name in dict.fromkeys(r["recipient"] for r in rows):
        lines += ["", f"recipient {name}", head, "-" * len(head)]
        for r in (r for r in rows if r["recipient"] == name):
            lines.append(f"{r['condition']:<38} {cell(r['ko_vd_pct'], 1):>26} {cell(r['en_vd_pct'], 1):>26} "
                         f"{cell(r['ko_text_acc'], 3):>28}")
    return "\n".join(lines)


def run_aggregate(dirs: Sequence[Path], out: Path) -> str:
    """Summary table + heatmap over several seeds' outputs."""
    results = []
    for d in dirs:
        path = Path(d) / "rows.json"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run the seed first)")
        results.append(json.loads(path.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate_rows(results)
    text = format_summary(rows)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    mean, per_seed = aggregate_patching(results)
    heatmap(mean, f"Activation patching, mean over organism seeds {[r['seed'] for r in results]} "
            "(each seed's value in parentheses)", out / "heatmap.png", per_seed=per_seed)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, help="organism folder (organism.json, base/, ko_ft/, data/); read only")
    ap.add_argument("--seed", type=int, default=0, help="the organism's seed (checked against organism.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--aggregate", type=Path, nargs="+", help="seed output folders to put into one table and figure")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.aggregate:
        print(run_aggregate(args.aggregate, args.out))
        return
    if args.organism is None:
        ap.error("give --organism DIR (or --aggregate DIR ...)")
    try:
        result = run_seed(args.organism, args.seed, args.out, n_boot=args.n_boot, progress=not args.quiet)
    except ControlFailed as err:
        print(f"CONTROL FAILED: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    print(format_table(result))


if __name__ == "__main__":
    main()
