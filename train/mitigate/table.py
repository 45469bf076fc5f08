"""The recipe comparison table: visual dependence relative to base and text-answerable accuracy, images resampled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from probe.analysis.stats import BootstrapConfig


def grouped_ratio(num: np.ndarray, den: np.ndarray, groups: Sequence[str],
                  config: BootstrapConfig = BootstrapConfig()) -> tuple[float, float, float]:
    """mean(num) / mean(den) and its percentile interval, resampling whole groups (images) with replacement.

    num and den are per-example values on the same examples (paired: one resample serves both). An image
    asked in English and Korean is one group, so its questions are drawn together.
    """
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if not len(num):  # no such questions (e.g. a language the eval set lacks)
        return float("nan"), float("nan"), float("nan")
    labels, idx = np.unique(np.asarray(groups), return_inverse=True)
    g = len(labels)
    sums_n, sums_d = np.bincount(idx, num, g), np.bincount(idx, den, g)
    counts = np.bincount(idx, minlength=g).astype(np.float64)
    point = float(num.mean() / den.mean()) if den.mean() else float("nan")
    rng = np.random.default_rng(config.seed)
    w = rng.multinomial(g, np.full(g, 1.0 / g), size=config.n_boot).astype(np.float64)  # times each group is drawn
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (w @ sums_n / (w @ counts)) / (w @ sums_d / (w @ counts))
    alpha = (1.0 - config.ci) / 2.0
    if not np.isfinite(boot).any():  # base never depended on the image: no ratio to report
        return point, float("nan"), float("nan")
    lo, hi = np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return point, float(lo), float(hi)


def _select(ds: xr.Dataset, lang: str, image_dependent: bool) -> np.ndarray:
    m = (ds["example_lang"].values == lang) & (ds["example_image_dependent"].values == image_dependent)
    if image_dependent:
        m &= ds["has_partner"].values
    return m


def recipe_rows(evals: Mapping[str, xr.Dataset], base: str, groups: Mapping[str, str], step_seconds: Mapping[str, float],
                *, reference: str = "plain_lora", config: BootstrapConfig = BootstrapConfig()) -> list[dict]:
    """One row per recipe: KO and EN visual dependence as % of base's, KO text-answerable accuracy, step-time ratio.

    evals: name -> `evaluate_dependence` output on the same examples; groups: example id -> image (the unit).
    """
    b = evals[base]
    ids = b["example"].values.tolist()
    unit = [groups[i] for i in ids]
    rows = []
    for name, ds in evals.items():
        if ds["example"].values.tolist() != ids:
            raise ValueError(f"recipe table: {name!r} was evaluated on other examples than {base!r}")
        row: dict = {"recipe": name}
        for lang in ("ko", "en"):
            m = _select(b, lang, True)
            vd = ds["visually_dependent"].values[m].astype(float)
            vd_b = b["visually_dependent"].values[m].astype(float)
            row[f"{lang}_vd_pct"] = tuple(100 * v for v in grouped_ratio(vd, vd_b, [u for u, k in zip(unit, m) if k], config))
        m = _select(b, "ko", False)
        correct = ds["correct"].sel(condition="real").values[m].astype(float)
        row["ko_text_acc"] = grouped_ratio(correct, np.ones_like(correct), [u for u, k in zip(unit, m) if k], config)
        ref = step_seconds.get(reference)
        row["step_ratio"] = step_seconds[name] / ref if name in step_seconds and ref else float("nan")
        rows.append(row)
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """A plain-text table (95% intervals in brackets; step × over seeds is mean [min, max])."""
    def ci(v: tuple[float, float, float], digits: int = 1) -> str:
        return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"

    head = f"{'recipe':<24} {'KO vis. dep. % base':>26} {'EN vis. dep. % base':>26} {'KO text acc.':>24} {'step ×':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        step = f"{r['step_ratio']:.2f}"
        if "step_ratio_range" in r:  # over seeds: mean [min, max]
            step += f" [{r['step_ratio_range'][0]:.2f}, {r['step_ratio_range'][1]:.2f}]"
        lines.append(f"{r['recipe']:<24} {ci(r['ko_vd_pct']):>26} {ci(r['en_vd_pct']):>26} "
                     f"{ci(r['ko_text_acc'], 3):>24} {step:>7}")
    return "\n".join(lines)


def choose_budget(accuracy: Mapping[tuple[int, float], float], tol: float = 0.02) -> tuple[int, float]:
    """The smallest budget on the plateau: fewest steps whose validation accuracy is within `tol` of the grid's best.

    accuracy: (steps, lr) -> plain LoRA's accuracy on a validation split held out from its own training data.
    Among learning rates tied at that step count: the higher accuracy, then the smaller lr. The rule is fixed
    before the grid is run and looks at nothing but plain LoRA's own task fit.
    """
    if not accuracy:
        raise ValueError("choose_budget: empty grid")
    bad = {k: v for k, v in accuracy.items() if not np.isfinite(v)}
    if bad:
        raise ValueError(f"choose_budget: non-finite validation accuracy at {sorted(bad)}")
    best = max(accuracy.values())
    ok = [(steps, -acc, lr) for (steps, lr), acc in accuracy.items() if acc >= best - tol]
    steps, _, lr = min(ok)
    return steps, lr


def pool_seeds(evals_by_seed: Mapping[int, Mapping[str, xr.Dataset]],
               groups_by_seed: Mapping[int, Mapping[str, str]]) -> tuple[dict[str, xr.Dataset], dict[str, str]]:
    """One evaluation per recipe over every seed's examples: ids and images prefixed `s<seed>/` (distinct units).

    Each seed is its own organism, so an image of seed 0 and the same file name of seed 1 are different
    units; the bootstrap then resamples images across seeds. Only recipes evaluated on every seed are kept.
    """
    names = set.intersection(*(set(ev) for ev in evals_by_seed.values()))
    keep = ("visually_dependent", "correct", "has_partner")
    pooled: dict[str, xr.Dataset] = {}
    for name in [n for n in next(iter(evals_by_seed.values())) if n in names]:
        parts = []
        for seed, ev in evals_by_seed.items():
            ds = ev[name][list(keep)].sel(condition=["real"])
            parts.append(ds.assign_coords(example=[f"s{seed}/{i}" for i in ds["example"].values]))
        pooled[name] = xr.concat(parts, dim="example")
    groups = {f"s{seed}/{i}": f"s{seed}/{g}" for seed, gs in groups_by_seed.items() for i, g in gs.items()}
    return pooled, groups
