"""POPE (Li et al., EMNLP 2023): "Is there a {object} in the image?" yes/no probing of object hallucination.

Over a manifest whose examples carry `labels.objects` (the objects in the image; optionally
`labels.objects_<lang>`, the same objects named in that language, in the same order). Sampling, per image (one
image = one independent unit; its examples' group, else its path), with `seed`:

- positives: the image's objects (at most `per_image`, drawn uniformly without replacement when more);
- negatives: as many objects NOT in the image, from the vocabulary of all images' objects:
  random — drawn uniformly without replacement (numpy default_rng([seed, image index]));
  popular — the most frequent objects (number of images holding them), ties by name;
  adversarial — the objects co-occurring most often with the image's objects, ties by frequency then name
  (with no co-occurrence at all, e.g. one object per image, this is the popular set).

Each (image, object) is asked in every language of the manifest ("Is there a {object} in the image?";
Korean "이미지에 {object}이/가 있습니까?", 이 after a final consonant (받침), 가 after a vowel), answered by ranking
the two answers (probe.eval.predict.rank_choices), and scored with accuracy, precision, recall, F1 and yes-ratio,
"yes" being the positive class, with cluster-bootstrap intervals over images.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import xarray as xr

from probe.analysis.stats import BootstrapConfig
from probe.data.example import Example
from probe.eval.intervals import cluster_count_ci

SETTINGS = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
QUESTIONS = {"en": "Is there a {object} in the image?", "ko": "이미지에 {object}{particle} 있습니까?"}
ANSWERS = {"en": ("yes", "no"), "ko": ("예", "아니요")}


@dataclass(frozen=True)
class PopeConfig:
    """Sampling and scoring settings of a POPE evaluation (saved in the result's attrs)."""

    seed: int = 0
    per_image: int = 3
    settings: tuple[str, ...] = SETTINGS
    batch_size: int = 32
    intervals: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad or not self.settings or self.per_image < 1:
            raise ValueError(f"PopeConfig: settings must be among {SETTINGS} and per_image >= 1; got {self}")
        object.__setattr__(self, "settings", tuple(self.settings))


def korean_particle(word: str) -> str:
    """이 when the word's last syllable has a final consonant (받침), else 가; 이(가) for a non-Hangul ending."""
    last = word.rstrip()[-1:] or " "
    code = ord(last) - 0xAC00
    if not 0 <= code < 11172:
        return "이(가)"
    return "이" if code % 28 else "가"


def question(obj: str, lang: str) -> str:
    """The POPE question about `obj` in `lang` (en or ko)."""
    if lang not in QUESTIONS:
        raise ValueError(f"POPE: no question template for language {lang!r} (have {sorted(QUESTIONS)})")
    return QUESTIONS[lang].format(object=obj, particle=korean_particle(obj) if lang == "ko" else "")


@dataclass(frozen=True)
class _Image:
    unit: str
    image: object
    objects: tuple[str, ...]
    names: dict[str, dict[str, str]]  # lang -> object -> word


def _images(examples: Sequence[Example]) -> list[_Image]:
    """One entry per image (unit), in order of first appearance; objects from its examples' labels."""
    seen: dict[str, _Image] = {}
    for ex in examples:
        objs = ex.labels.get("objects")
        if objs is None:
            continue
        if isinstance(objs, str) or not all(isinstance(o, str) for o in objs):
            raise ValueError(f"example {ex.id!r}: labels.objects must be a list of object names, got {objs!r}")
        unit = ex.group or str(ex.image)
        names = seen[unit].names if unit in seen else {}
        for key, value in ex.labels.items():
            if key.startswith("objects_") and isinstance(value, list) and len(value) == len(objs):
                names.setdefault(key[len("objects_"):], {}).update(zip(objs, map(str, value)))
        seen.setdefault(unit, _Image(unit, ex.image, tuple(dict.fromkeys(objs)), names))
    if not seen:
        raise ValueError("POPE needs examples with labels.objects (the objects in each image); none have it")
    return list(seen.values())


def sample_questions(images: Sequence[_Image], setting: str, seed: int, per_image: int = 3) -> list[tuple[int, str, bool]]:
    """(image index, object, present) for one setting: positives and as many negatives per image (module docstring)."""
    freq = Counter(o for im in images for o in im.objects)
    vocab = sorted(freq)
    cooc: Counter = Counter()
    for im in images:
        for a in im.objects:
            for b in im.objects:
                if a != b:
                    cooc[(a, b)] += 1
    out = []
    for i, im in enumerate(images):
        rng = np.random.default_rng([seed, SETTINGS.index(setting), i])
        pos = list(im.objects)
        if len(pos) > per_image:
            pos = [pos[j] for j in sorted(rng.choice(len(pos), per_image, replace=False))]
        absent = [o for o in vocab if o not in im.objects]
        k = min(len(pos), len(absent))
        if setting == "random":
            neg = [absent[j] for j in rng.choice(len(absent), k, replace=False)] if k else []
        elif setting == "popular":
            neg = sorted(absent, key=lambda o: (-freq[o], o))[:k]
        else:
            neg = sorted(absent, key=lambda o: (-sum(cooc[(p, o)] for p in im.objects), -freq[o], o))[:k]
        out += [(i, o, True) for o in pos] + [(i, o, False) for o in neg]
    return out


def pope_examples(examples: Sequence[Example], config: PopeConfig = PopeConfig()) -> list[Example]:
    """The POPE questions of every setting and language of `examples` (question_type = the setting)."""
    images = _images(examples)
    names: dict[str, dict[str, str]] = {}  # an absent object is named as the images that hold it name it
    for im in images:
        for lang, words in im.names.items():
            names.setdefault(lang, {}).update(words)
    langs = sorted({ex.lang for ex in examples if ex.labels.get("objects") is not None})
    out = []
    for setting in config.settings:
        for i, obj, present in sample_questions(images, setting, config.seed, config.per_image):
            im = images[i]
            for lang in langs:
                word = names.get(lang, {}).get(obj, obj)
                yes, no = ANSWERS[lang] if lang in ANSWERS else ANSWERS["en"]
                out.append(Example(
                    id=f"pope-{setting}-{i:05d}-{obj}-{lang}", image=im.image, prompt=question(word, lang),
                    answer=yes if present else no, lang=lang, question_type=setting, image_dependent=True,
                    labels={"object": obj, "present": present}, group=im.unit))
    return out


def _metrics(c: np.ndarray) -> np.ndarray:
    """[..., 4] summed (TP, FP, TN, FN) -> [..., 5] accuracy, precision, recall, F1, yes-ratio (NaN where undefined)."""
    tp, fp, tn, fn = np.moveaxis(np.asarray(c, dtype=np.float64), -1, 0)
    n = tp + fp + tn + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
        return np.stack([(tp + tn) / n, precision, recall, f1, (tp + fp) / n], axis=-1)


def pope_scores(examples: Sequence[Example], said_yes: Sequence[bool], config: PopeConfig = PopeConfig()) -> xr.Dataset:
    """The five metrics per (setting, lang) with cluster-bootstrap intervals over images, and per-question rows."""
    present = np.array([bool(ex.labels["present"]) for ex in examples])
    yes = np.asarray(said_yes, dtype=bool)
    counts = np.stack([present & yes, ~present & yes, ~present & ~yes, present & ~yes], axis=1).astype(float)
    settings = [s for s in config.settings if any(ex.question_type == s for ex in examples)]
    langs = sorted({ex.lang for ex in examples})
    setting_of, lang_of = np.array([ex.question_type for ex in examples]), np.array([ex.lang for ex in examples])
    units = np.array([ex.group or "" for ex in examples])
    shape = (len(settings), len(langs), len(METRICS))
    val, lo, hi = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    n, n_units = np.zeros(shape[:2], int), np.zeros(shape[:2], int)
    for a, s in enumerate(settings):
        for b, lg in enumerate(langs):
            m = (setting_of == s) & (lang_of == lg)
            n[a, b], n_units[a, b] = int(m.sum()), len(set(units[m].tolist()))
            if m.any():
                val[a, b], lo[a, b], hi[a, b] = cluster_count_ci(counts[m], units[m], _metrics, config.intervals)
    dims = ("setting", "lang")
    data = {name: (dims, val[..., k]) for k, name in enumerate(METRICS)}
    data |= {f"{name}_low": (dims, lo[..., k]) for k, name in enumerate(METRICS)}
    data |= {f"{name}_high": (dims, hi[..., k]) for k, name in enumerate(METRICS)}
    data |= {"n": (dims, n), "n_units": (dims, n_units),
             "said_yes": ("question", yes), "present": ("question", present)}
    cfg = asdict(config)
    return xr.Dataset(data, coords={"setting": settings, "lang": langs, "question": [ex.id for ex in examples],
                                    "question_setting": ("question", setting_of), "question_lang": ("question", lang_of),
                                    "question_group": ("question", units)},
                      attrs={"protocol": "pope", "pope_config": json.dumps(cfg, default=list)})


def evaluate_pope(adapter: object, examples: Sequence[Example], config: PopeConfig = PopeConfig(),
                  progress: bool = True) -> xr.Dataset:
    """Build the POPE questions of `examples`, answer them by ranking yes/no, and score them (see module docstring)."""
    from probe.eval.predict import rank_choices

    questions = pope_examples(examples, config)
    choices = [list(ANSWERS.get(ex.lang, ANSWERS["en"])) for ex in questions]
    picked = rank_choices(adapter, questions, choices, batch_size=config.batch_size, progress=progress)
    return pope_scores(questions, [p == c[0] for p, c in zip(picked, choices)], config)


def pope_rows(ds: xr.Dataset) -> list[dict]:
    """One row per (setting, lang): n, units, the five metrics with their interval bounds."""
    rows = []
    for s in ds["setting"].values:
        for lg in ds["lang"].values:
            x = ds.sel(setting=s, lang=lg)
            row = {"setting": str(s), "lang": str(lg), "n": int(x["n"]), "units": int(x["n_units"])}
            row |= {f"{m}{k}": float(x[f"{m}{k}"]) for m in METRICS for k in ("", "_low", "_high")}
            rows.append(row)
    return rows


def format_pope_table(ds: xr.Dataset, title: str = "POPE") -> object:
    """A rich table readable at 80 columns: setting × lang rows, the five metrics (%) with their intervals."""
    from probe.tables import Column, rich_table

    rows = pope_rows(ds)
    heads = {"accuracy": "acc.", "precision": "prec.", "recall": "recall", "f1": "F1", "yes_ratio": "yes"}
    cols = [Column("setting", justify="left"), Column("lang", justify="left"), Column("n")]
    cols += [Column(m, heads[m]) for m in METRICS]
    cells = []
    for r in rows:
        c = {"setting": r["setting"], "lang": r["lang"], "n": f"{r['n']}"}
        for m in METRICS:
            c[m] = "–" if not np.isfinite(r[m]) else (
                f"{r[m] * 100:.1f}\n[{r[m + '_low'] * 100:.0f}–{r[m + '_high'] * 100:.0f}]")
        cells.append(c)
    caption = ("% with \\[low–high] 95% cluster-bootstrap intervals over images; 'yes' is the positive class; "
               "yes = yes-ratio; all columns in --json/--csv")
    return rich_table(title, cols, rows, caption, cells)
