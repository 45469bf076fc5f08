"""Behavioural visual dependence: accuracy with real / blank / mismatched images, per language and question type."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image
from rich.table import Table

from probe.data.example import Example
from probe.eval.predict import greedy_answers, normalise, rank_choices
from probe.models.base import ModelAdapter

CONDITIONS: tuple[str, ...] = ("real", "blank", "mismatched")
ChoiceFn = Callable[[Example], "list[str] | None"]


def default_choices(ex: Example) -> list[str] | None:
    """Candidate answers: labels['choices'] if given, else the synthetic set's answers, else None (greedy)."""
    given = ex.labels.get("choices")
    if given:
        return [str(c) for c in given]
    from probe.data.synth import answer_choices

    try:
        cands = answer_choices(ex.lang, ex.question_type)
    except ValueError:
        return None
    return cands if ex.answer is None or ex.answer in cands else None


def _open(ex: Example) -> Image.Image:
    if isinstance(ex.image, Image.Image):
        return ex.image
    if ex.image is None:
        raise ValueError(f"example {ex.id!r}: no image to evaluate with")
    with Image.open(ex.image) as im:
        return im.convert("RGB")


def mismatch_partners(examples: Sequence[Example], seed: int = 0) -> list[int | None]:
    """For each example, another with the same lang, question_type and image_dependent flag but a different answer."""
    rng = random.Random(seed)
    groups: dict[tuple, list[int]] = {}
    key = lambda ex: (ex.lang, ex.question_type, bool(ex.image_dependent))  # noqa: E731
    for i, ex in enumerate(examples):
        groups.setdefault(key(ex), []).append(i)
    partners: list[int | None] = []
    for i, ex in enumerate(examples):
        pool = [j for j in groups[key(ex)]
                if normalise(examples[j].answer or "") != normalise(ex.answer or "") and examples[j].image != ex.image]
        partners.append(rng.choice(pool) if pool else None)
    return partners


def _predict(adapter: ModelAdapter, examples: list[Example], choices: list[list[str] | None],
             batch_size: int, progress: bool) -> list[str]:
    ranked = [i for i, c in enumerate(choices) if c]
    greedy = [i for i, c in enumerate(choices) if not c]
    preds = [""] * len(examples)
    if ranked:
        out = rank_choices(adapter, [examples[i] for i in ranked], [choices[i] for i in ranked],
                           batch_size=batch_size, progress=progress)
        for i, p in zip(ranked, out):
            preds[i] = p
    if greedy:
        out = greedy_answers(adapter, [examples[i] for i in greedy], batch_size=batch_size)
        for i, p in zip(greedy, out):
            preds[i] = p
    return preds


def evaluate_dependence(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    choices: ChoiceFn | None = None,
    blank_color: tuple[int, int, int] = (0, 0, 0),
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Per-example predictions under each image condition, and their aggregates per lang x question_type.

    visual_dependence: share of image-dependent questions answered correctly with the real image AND
    answered with the mismatched image's answer when shown another example's image.
    """
    examples = list(examples)
    bad = [ex.id for ex in examples if ex.answer is None]
    if bad:
        raise ValueError(f"evaluate_dependence: example {bad[0]!r} has no reference answer")
    if not examples:
        raise ValueError("evaluate_dependence: no examples")
    choose = choices or default_choices
    cands = [choose(ex) for ex in examples]
    partners = mismatch_partners(examples, seed)
    reals = [replace(ex, image=_open(ex), condition="real") for ex in examples]
    blanks = [replace(ex, image=Image.new("RGB", im.image.size, blank_color), condition="blank")
              for ex, im in zip(examples, reals)]
    mism = [replace(ex, image=reals[j].image if j is not None else reals[i].image, condition="mismatched")
            for i, (ex, j) in enumerate(zip(examples, partners))]
    preds = {cond: _predict(adapter, exs, cands, batch_size, progress)
             for cond, exs in zip(CONDITIONS, (reals, blanks, mism))}
    truth = [normalise(ex.answer) for ex in examples]
    other = [normalise(examples[j].answer) if j is not None else None for j in partners]
    correct = {c: np.array([normalise(p) == t for p, t in zip(preds[c], truth)]) for c in CONDITIONS}
    has_partner = np.array([o is not None for o in other])
    follows = np.array([o is not None and normalise(p) == o for p, o in zip(preds["mismatched"], other)])
    dep = np.array([bool(ex.image_dependent) for ex in examples])
    per_example = xr.Dataset(
        {
            "prediction": (("condition", "example"), np.array([preds[c] for c in CONDITIONS], dtype=str)),
            "correct": (("condition", "example"), np.stack([correct[c] for c in CONDITIONS])),
            "follows_mismatched": ("example", follows),
            "visually_dependent": ("example", correct["real"] & follows),
            "has_partner": ("example", has_partner),
            "chance_example": ("example", np.array([1.0 / len(c) if c else np.nan for c in cands])),
        },
        coords={
            "condition": list(CONDITIONS),
            "example": np.array([ex.id for ex in examples], dtype=str),
            "example_lang": ("example", np.array([ex.lang for ex in examples], dtype=str)),
            "example_question_type": ("example", np.array([ex.question_type for ex in examples], dtype=str)),
            "example_image_dependent": ("example", dep),
            "example_answer": ("example", np.array([ex.answer for ex in examples], dtype=str)),
        },
    )
    return per_example.merge(_aggregate(per_example))


def _aggregate(ds: xr.Dataset) -> xr.Dataset:
    langs = sorted(set(ds["example_lang"].values.tolist()))
    qtypes = sorted(set(ds["example_question_type"].values.tolist())) + ["all"]
    kinds = ["image", "text"]
    shape = (len(langs), len(qtypes), len(kinds))
    acc = np.full((len(CONDITIONS), *shape), np.nan)
    chance = np.full(shape, np.nan)
    count = np.zeros(shape, dtype=np.int64)
    vd = np.full((len(langs), len(qtypes)), np.nan)
    lang = ds["example_lang"].values
    qt = ds["example_question_type"].values
    dep = ds["example_image_dependent"].values
    for a, lg in enumerate(langs):
        for b, q in enumerate(qtypes):
            for c, kind in enumerate(kinds):
                m = (lang == lg) & ((qt == q) | (q == "all")) & (dep == (kind == "image"))
                count[a, b, c] = int(m.sum())
                if m.any():
                    acc[:, a, b, c] = ds["correct"].values[:, m].mean(axis=1)
                    chance[a, b, c] = np.nanmean(ds["chance_example"].values[m])
                    if kind == "image":
                        pm = m & ds["has_partner"].values
                        if pm.any():
                            vd[a, b] = ds["visually_dependent"].values[pm].mean()
    return xr.Dataset(
        {
            "accuracy": (("condition", "lang", "question_type", "kind"), acc),
            "chance": (("lang", "question_type", "kind"), chance),
            "n": (("lang", "question_type", "kind"), count),
            "visual_dependence": (("lang", "question_type"), vd),
        },
        coords={"condition": list(CONDITIONS), "lang": langs, "question_type": qtypes, "kind": kinds},
    )


def format_dependence_table(ds: xr.Dataset, title: str = "visual dependence") -> Table:
    """A rich table: one row per lang x question type x kind, accuracy per condition and visual dependence."""
    table = Table(title=title)
    for col in ("lang", "question", "kind", "n", "real", "blank", "mismatched", "chance", "visual dep."):
        table.add_column(col, justify="left" if col in ("lang", "question", "kind") else "right")

    def pct(x: float) -> str:
        return "–" if np.isnan(x) else f"{100 * x:.1f}%"

    for lg in ds["lang"].values:
        for q in ds["question_type"].values:
            for kind in ds["kind"].values:
                sel = {"lang": lg, "question_type": q, "kind": kind}
                n = int(ds["n"].sel(sel))
                if n == 0:
                    continue
                acc = ds["accuracy"].sel(sel)
                vd = float(ds["visual_dependence"].sel(lang=lg, question_type=q)) if kind == "image" else np.nan
                table.add_row(str(lg), str(q), str(kind), str(n),
                              *(pct(float(acc.sel(condition=c))) for c in CONDITIONS),
                              pct(float(ds["chance"].sel(sel))), pct(vd))
    return table


def save_dependence(ds: xr.Dataset, path: str | Path, *, group: str | None = "eval") -> Path:
    """Write the evaluation into zarr `path` (group `group` inside a TraceStore, or a stand-alone zarr), crash-safely."""
    from probe.store import TraceStore
    from probe.store.groups import ensure_plain_group, write_dataset

    path = Path(path)
    if group and TraceStore.exists(path):
        TraceStore.open(path).write_group(group, ds)
    elif group:
        ensure_plain_group(path)  # a plain zarr root holding the group
        write_dataset(path / group, ds, {}, scratch=path.parent / f".{path.name}.{group}")
    else:
        write_dataset(path, ds, {})
    return path


def load_dependence(path: str | Path, *, group: str | None = "eval") -> xr.Dataset:
    """Read an evaluation written by `save_dependence`."""
    from probe.store import TraceStore

    if group and TraceStore.exists(path):
        return TraceStore.open(path).read_group(group).load()
    return xr.open_zarr(path, group=group, consolidated=False).load()
