"""Behavioural visual dependence: accuracy with real / blank / mismatched images, per language and question type.

Every row has one scoring rule (see probe.eval.candidates): 'ranked' (the best of K candidates; chance is
the mean of 1/K, exact) or 'open' (greedy decoding, normalised exact match; no chance level). Every
share carries a percentile interval from a cluster bootstrap over the independent unit (the example's
`group`, else its image), so an image asked in two languages counts once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image
from rich.table import Table

from probe.tables import Column, rich_table

from probe.data.example import Example
from probe.eval.candidates import Candidates, ChoicesTable, check_answer, checked_choices, plan_candidates
from probe.analysis.stats import BootstrapConfig
from probe.eval.intervals import cluster_share_ci
from probe.eval.normalise import answers_match, normalise
from probe.eval.predict import greedy_answers, rank_choices
from probe.models._inputs import load_image
from probe.models.base import ModelAdapter
from probe.vocab import RESULT_PREFIX, example_coords, image_dependent_of, unit_of  # noqa: F401  (unit_of: public here too)
from probe.models.limits import check_examples_fit

CONDITIONS: tuple[str, ...] = ("real", "blank", "mismatched")
KINDS: tuple[str, ...] = ("image", "text")
ChoiceFn = Callable[[Example], "list[str] | None"]


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation, saved in the result's attrs."""

    batch_size: int = 32
    blank_color: tuple[int, int, int] = (0, 0, 0)
    seed: int = 0
    max_choices: int = 20
    choices_file: str = ""
    intervals: BootstrapConfig = BootstrapConfig()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size must be >= 1, got {self.batch_size}")
        if len(self.blank_color) != 3 or not all(0 <= int(c) <= 255 for c in self.blank_color):
            raise ValueError(f"EvalConfig.blank_color must be three 0..255 values, got {self.blank_color}")
        if self.max_choices < 2:
            raise ValueError(f"EvalConfig.max_choices must be >= 2, got {self.max_choices}")


_image_dependent = image_dependent_of  # one rule (probe.vocab): a missing flag counts as dependent; the table says so


def _open(ex: Example) -> Image.Image:
    if isinstance(ex.image, Image.Image):
        return ex.image
    return load_image(ex)  # one-line errors for a missing, corrupt or oversized image, as capture gives


def mismatch_partners(
    examples: Sequence[Example], seed: int = 0, candidates: Sequence[Candidates] | None = None
) -> list[int | None]:
    """For each example, another with the same lang, question_type and image_dependent flag, a different image and
    a different answer (one of the example's own candidates when it is ranked)."""
    rng = random.Random(seed)
    groups: dict[tuple, list[int]] = {}
    key = lambda ex: (ex.lang, ex.question_type, _image_dependent(ex))  # noqa: E731
    for i, ex in enumerate(examples):
        groups.setdefault(key(ex), []).append(i)
    partners: list[int | None] = []
    for i, ex in enumerate(examples):
        allowed = None
        if candidates is not None and candidates[i].choices is not None:
            allowed = {normalise(c) for c in candidates[i].choices}
        pool = [j for j in groups[key(ex)]
                if normalise(examples[j].answer or "") != normalise(ex.answer or "") and examples[j].image != ex.image
                and (allowed is None or normalise(examples[j].answer or "") in allowed)]
        partners.append(rng.choice(pool) if pool else None)
    return partners


def _predict(adapter: ModelAdapter, examples: list[Example], cands: Sequence[Candidates],
             batch_size: int, progress: bool) -> list[str]:
    ranked = [i for i, c in enumerate(cands) if c.choices is not None]
    greedy = [i for i, c in enumerate(cands) if c.choices is None]
    preds = [""] * len(examples)
    if ranked:
        out = rank_choices(adapter, [examples[i] for i in ranked], [list(cands[i].choices) for i in ranked],
                           batch_size=batch_size, progress=progress)
        for i, p in zip(ranked, out):
            preds[i] = p
    if greedy:
        out = greedy_answers(adapter, [examples[i] for i in greedy], batch_size=batch_size)
        for i, p in zip(greedy, out):
            preds[i] = p
    return preds


def _from_choice_fn(examples: Sequence[Example], choices: ChoiceFn) -> list[Candidates]:
    """Candidates from a caller's function (a list ranks, None scores open-ended); one rule per (lang, question type)."""
    out = [Candidates(checked_choices(c, f"example {ex.id!r} choices function"), "function") if c
           else Candidates(None, "none") for ex, c in ((ex, choices(ex)) for ex in examples)]
    rules: dict[tuple[str, str], set[str]] = {}
    for ex, c in zip(examples, out):
        rules.setdefault((ex.lang, ex.question_type), set()).add(c.rule)
    mixed = [k for k, v in rules.items() if len(v) > 1]
    if mixed:
        raise ValueError(f"lang={mixed[0][0]!r} question_type={mixed[0][1]!r}: the choices function ranks some examples "
                         "and leaves others open-ended; one row cannot mix scoring rules")
    for ex, c in zip(examples, out):
        check_answer(ex, c)
    return out


def evaluate_dependence(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    choices: ChoiceFn | None = None,
    choices_file: str | Path | ChoicesTable | None = None,
    max_choices: int = 20,
    blank_color: tuple[int, int, int] = (0, 0, 0),
    seed: int = 0,
    intervals: BootstrapConfig = BootstrapConfig(),
    progress: bool = True,
) -> xr.Dataset:
    """Per-example predictions under each image condition, and their aggregates per lang x question_type x kind.

    Candidates: `choices(example)` when given, else probe.eval.candidates.plan_candidates (labels.choices,
    `choices_file` as {lang: {question_type: [answers]}}, the manifest's answers, else open-ended).
    visual_dependence: share of image-dependent questions answered correctly with the real image AND
    answered with the other image's answer when shown another example's image.
    """
    config = EvalConfig(batch_size=batch_size, blank_color=tuple(blank_color), seed=seed, max_choices=max_choices,
                        choices_file="" if choices_file is None or isinstance(choices_file, Mapping) else str(choices_file),
                        intervals=intervals)
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_dependence: no examples")
    bad = [ex.id for ex in examples if ex.answer is None]
    if bad:
        raise ValueError(f"evaluate_dependence: example {bad[0]!r} has no reference answer")
    cands = (_from_choice_fn(examples, choices) if choices is not None
             else plan_candidates(examples, choices_file=choices_file, max_choices=max_choices))
    partners = mismatch_partners(examples, seed, cands)
    reals = [replace(ex, image=_open(ex), condition="real") for ex in examples]
    check_examples_fit(adapter, reals)  # an over-long prompt is refused before any forward
    blanks = [replace(ex, image=Image.new("RGB", im.image.size, config.blank_color), condition="blank")
              for ex, im in zip(examples, reals)]
    mism = [replace(ex, image=reals[j].image if j is not None else reals[i].image, condition="mismatched")
            for i, (ex, j) in enumerate(zip(examples, partners))]
    preds = {cond: _predict(adapter, exs, cands, batch_size, progress)
             for cond, exs in zip(CONDITIONS, (reals, blanks, mism))}
    correct = {c: np.array([answers_match(p, ex.answer, ex.lang) for p, ex in zip(preds[c], examples)])
               for c in CONDITIONS}
    has_partner = np.array([j is not None for j in partners])
    follows = np.array([j is not None and answers_match(p, examples[j].answer, ex.lang)
                        for p, ex, j in zip(preds["mismatched"], examples, partners)])
    per_example = xr.Dataset(
        {
            "prediction": (("condition", "example"), np.array([preds[c] for c in CONDITIONS], dtype=str)),
            "correct": (("condition", "example"), np.stack([correct[c] for c in CONDITIONS])),
            "follows_mismatched": ("example", follows),
            "visually_dependent": ("example", correct["real"] & follows),
            "has_partner": ("example", has_partner),
            "n_choices": ("example", np.array([len(c.choices or ()) for c in cands], dtype=np.int64)),
            "chance_example": ("example", np.array([1.0 / len(c.choices) if c.choices else np.nan for c in cands])),
        },
        coords={
            "condition": list(CONDITIONS),
            "example": np.array([ex.id for ex in examples], dtype=str),
            **{k: ("example", np.array(v, dtype=bool if k.endswith("image_dependent") else str))
               for k, v in example_coords(examples, prefix=RESULT_PREFIX).items() if not k.endswith("condition")},
            "example_answer": ("example", np.array([ex.answer for ex in examples], dtype=str)),
            "example_rule": ("example", np.array([c.rule for c in cands], dtype=str)),
            "example_source": ("example", np.array([c.source for c in cands], dtype=str)),
        },
    )
    ds = per_example.merge(_aggregate(per_example, config.intervals))
    ds.attrs["eval_config"] = json.dumps(asdict(config))
    ds.attrs["image_dependent_missing"] = int(sum(ex.image_dependent is None for ex in examples))
    return ds


def _aggregate(ds: xr.Dataset, intervals: BootstrapConfig) -> xr.Dataset:
    """Shares with intervals per lang x question_type (plus 'all' when its types share a rule) x kind."""
    langs = sorted(set(ds["example_lang"].values.tolist()))
    qtypes = sorted(set(ds["example_question_type"].values.tolist())) + ["all"]
    shape = (len(langs), len(qtypes), len(KINDS))
    acc, acc_lo, acc_hi = (np.full((len(CONDITIONS), *shape), np.nan) for _ in range(3))
    chance = np.full(shape, np.nan)
    count = np.zeros(shape, dtype=np.int64)
    units_n = np.zeros(shape, dtype=np.int64)
    vd, vd_lo, vd_hi = (np.full(shape[:2], np.nan) for _ in range(3))
    vd_n = np.zeros(shape[:2], dtype=np.int64)
    rule = np.full(shape[:2], "", dtype=object)
    source = np.full(shape[:2], "", dtype=object)
    k_min = np.zeros(shape[:2], dtype=np.int64)
    k_max = np.zeros(shape[:2], dtype=np.int64)
    lang, qt = ds["example_lang"].values, ds["example_question_type"].values
    dep, units = ds["example_image_dependent"].values, ds["example_group"].values
    rules, sources, k = ds["example_rule"].values, ds["example_source"].values, ds["n_choices"].values
    for a, lg in enumerate(langs):
        for b, q in enumerate(qtypes):
            in_row = (lang == lg) & ((qt == q) | (q == "all"))
            if not in_row.any():  # this language has no question of this type: rule and source stay ''
                continue
            row_rules = sorted(set(rules[in_row].tolist()))
            if len(row_rules) != 1:  # only 'all' can get here: its question types are scored differently
                rule[a, b] = "mixed"
                continue
            rule[a, b] = row_rules[0]
            source[a, b] = "+".join(sorted(set(sources[in_row].tolist())))
            k_min[a, b], k_max[a, b] = int(k[in_row].min()), int(k[in_row].max())
            for c, kind in enumerate(KINDS):
                m = in_row & (dep == (kind == "image"))
                count[a, b, c] = int(m.sum())
                if not m.any():
                    continue
                units_n[a, b, c] = len(set(units[m].tolist()))
                acc[:, a, b, c], acc_lo[:, a, b, c], acc_hi[:, a, b, c] = cluster_share_ci(
                    ds["correct"].values[:, m], units[m], intervals)
                if rule[a, b] == "ranked":
                    chance[a, b, c] = float(ds["chance_example"].values[m].mean())
                if kind == "image":
                    pm = m & ds["has_partner"].values
                    vd_n[a, b] = int(pm.sum())
                    if pm.any():
                        v, lo, hi = cluster_share_ci(ds["visually_dependent"].values[pm][None], units[pm], intervals)
                        vd[a, b], vd_lo[a, b], vd_hi[a, b] = v[0], lo[0], hi[0]
    dims3 = ("condition", "lang", "question_type", "kind")
    dims2 = ("lang", "question_type")
    return xr.Dataset(
        {
            "accuracy": (dims3, acc), "accuracy_low": (dims3, acc_lo), "accuracy_high": (dims3, acc_hi),
            "chance": (dims3[1:], chance),
            "n": (dims3[1:], count),
            "n_units": (dims3[1:], units_n),
            "visual_dependence": (dims2, vd), "visual_dependence_low": (dims2, vd_lo),
            "visual_dependence_high": (dims2, vd_hi), "n_dependence": (dims2, vd_n),
            "rule": (dims2, rule.astype(str)), "source": (dims2, source.astype(str)),
            "k_min": (dims2, k_min), "k_max": (dims2, k_max),
        },
        coords={"condition": list(CONDITIONS), "lang": langs, "question_type": qtypes, "kind": list(KINDS)},
    )


def _pct(x: float, lo: float = np.nan, hi: float = np.nan, sep: str = " ") -> str:
    if np.isnan(x):
        return "–"
    if np.isnan(lo):
        return f"{100 * x:.1f}%"
    return f"{100 * x:.1f}%{sep}[{100 * lo:.0f}–{100 * hi:.0f}]"


def _scoring(ds: xr.Dataset, lg: str, q: str) -> tuple[str, str, str]:
    """(scoring, candidates source, chance note) cells of a row."""
    sel = {"lang": lg, "question_type": q}
    if str(ds["rule"].sel(sel).item()) == "open":
        return "open (exact match)", "none (greedy)", "n/a"
    lo, hi = int(ds["k_min"].sel(sel)), int(ds["k_max"].sel(sel))
    return f"ranked K={lo}" if lo == hi else f"ranked K={lo}–{hi}", str(ds["source"].sel(sel).item()), ""


DEPENDENCE_COLUMNS = (
    Column("lang", justify="left"), Column("question", justify="left"), Column("kind", justify="left"),
    Column("n"), Column("units", terminal=False), Column("scoring", terminal=False), Column("candidates", terminal=False),
    *(Column(f"{c}{s}", c if c != "mismatched" else "mismatch", terminal=not s) for c in CONDITIONS
      for s in ("", "_low", "_high")),
    Column("chance"), Column("visual_dependence", "vis.dep"),
    Column("visual_dependence_low", terminal=False), Column("visual_dependence_high", terminal=False),
)


def dependence_rows(ds: xr.Dataset) -> list[dict]:
    """One row per lang x question type x kind with n: every column of the table, shares as fractions (0–1)."""
    rows = []
    for lg in ds["lang"].values:
        for q in ds["question_type"].values:
            for kind in ds["kind"].values:
                sel = {"lang": lg, "question_type": q, "kind": kind}
                n = int(ds["n"].sel(sel))
                if n == 0:
                    continue
                scoring, source, chance_note = _scoring(ds, lg, q)
                row = {"lang": str(lg), "question": str(q), "kind": str(kind), "n": n,
                       "units": int(ds["n_units"].sel(sel)), "scoring": scoring, "candidates": source}
                for c in CONDITIONS:
                    for v, s in (("accuracy", ""), ("accuracy_low", "_low"), ("accuracy_high", "_high")):
                        row[f"{c}{s}"] = float(ds[v].sel(**sel, condition=c))
                row["chance"] = chance_note or float(ds["chance"].sel(sel))
                for s in ("", "_low", "_high"):  # defined on image-dependent questions only
                    row[f"visual_dependence{s}"] = (float(ds[f"visual_dependence{s}"].sel(lang=lg, question_type=q))
                                                    if kind == "image" else None)
                rows.append(row)
    return rows


def format_dependence_table(ds: xr.Dataset, title: str = "visual dependence") -> Table:
    """A rich table readable at 80 columns: one row per lang x question type x kind, shares with intervals.

    The scoring rule and candidate source of each row are summarised below the table (every column, with
    full-precision values, is in `dependence_rows`, which `probe eval --json/--csv` writes).
    """
    cfg = json.loads(ds.attrs.get("eval_config", "{}")).get("intervals", {})
    ci = int(round(100 * cfg.get("ci", 0.95)))
    rows = dependence_rows(ds)
    scorings = sorted({f"{r['scoring']}, candidates: {r['candidates']}" for r in rows})
    how = scorings[0] if len(scorings) == 1 else "; ".join(
        sorted({f"{r['lang']}/{r['question']}: {r['scoring']}, {r['candidates']}" for r in rows}))
    units = "" if all(r["units"] == r["n"] for r in rows) else " n: examples (units differ: see --json)."
    caption = (f"shares with [low–high] {ci}% cluster-bootstrap intervals over independent units (example group, "
               f"else image).{units} Scoring: {how}. Candidates: labels = labels.choices, file = --choices, manifest = "
               "the manifest's answers, function = the caller's choices function.")
    missing = int(ds.attrs.get("image_dependent_missing", 0))
    if missing:
        caption += f" {missing} examples without image_dependent counted as image-dependent."
    cells = []
    for r in rows:
        text = {k: str(r[k]) for k in ("lang", "question", "kind", "n")}
        for c in CONDITIONS:
            text[c] = _pct(r[c], r[f"{c}_low"], r[f"{c}_high"], sep="\n")
        text["chance"] = r["chance"] if isinstance(r["chance"], str) else _pct(r["chance"])
        text["visual_dependence"] = "" if r["visual_dependence"] is None else _pct(
            r["visual_dependence"], r["visual_dependence_low"], r["visual_dependence_high"], sep="\n")
        cells.append(text)
    return rich_table(title, DEPENDENCE_COLUMNS, rows, caption.replace("[", "\\["), cells=cells)


def save_dependence(ds: xr.Dataset, path: str | Path, *, group: str | None = "eval") -> Path:
    """Write the evaluation into zarr `path` (group `group` inside a TraceStore, or a stand-alone zarr), crash-safely,
    as a typed result (probe.results kind "evaluation"), under the target's one-writer lock."""
    from probe.results import EVALUATION, stamp
    from probe.store import TraceStore
    from probe.store.groups import ensure_plain_group, write_dataset
    from probe.store.lock import StoreLock

    path = Path(path)
    ds = stamp(ds, EVALUATION)
    if group and TraceStore.exists(path):
        TraceStore.open(path).write_group(group, ds)  # the store's own lock
        return path
    # a stand-alone zarr: its root folder (or, written whole, a hidden sibling) carries the lock
    folder = path if group else path.parent / f".{path.name}.lock"
    folder.mkdir(parents=True, exist_ok=True)
    lock = StoreLock(folder, "write evaluation", shown_as=path, what="").acquire()
    try:
        if group:
            ensure_plain_group(path)  # a plain zarr root holding the group
            write_dataset(path / group, ds, {}, scratch=path.parent / f".{path.name}.{group}")
        else:
            write_dataset(path, ds, {})
    finally:
        lock.release()
    return path


def load_dependence(path: str | Path, *, group: str | None = "eval") -> xr.Dataset:
    """Read an evaluation written by `save_dependence` (one line if it is not one, or of a newer schema)."""
    from probe.results import EVALUATION, check
    from probe.store import TraceStore

    where = f"{path}::{group}" if group else str(path)
    if group and TraceStore.exists(path):
        return check(TraceStore.open(path).read_group(group), EVALUATION, where).load()
    return check(xr.open_zarr(path, group=group, consolidated=False), EVALUATION, where).load()
