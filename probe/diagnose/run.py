"""`diagnose(before, after, manifest, out)`: behaviour, the comparison report, causal tests and a ranked attribution.

The decision rule is fixed before any run: a candidate component is *a cause* when swapping BEFORE's copy into
AFTER restores at least `share` of BEFORE's visual dependence at the lower end of its 95% interval (cluster
bootstrap over images); the named cause is the highest-ranked such candidate (rank: restored share, ties within
`TIE` broken toward fewer parameters, i.e. the smallest sufficient component); none -> "no single cause".
Residual patches say *where* the difference lives and are reported beside the ranking, never named as causes
(BEFORE's last-layer residual at the answer position restores everything by construction).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from probe.analysis.stats import BootstrapConfig
from probe.data.example import Example
from probe.data.manifest import read_manifest
from probe.diagnose.causal import WHERE, plan, visually_dependent
from probe.diagnose.result import Diagnosis, Effect, write_diagnosis
from probe.eval.dependence import unit_of
from probe.eval.intervals import cluster_restored_ci
from probe.models.base import ModelAdapter
from probe.models.loading import load_model
from probe.models.swap import QK, parameters_of, swapped

SHARE = 0.5  # a single cause restores at least half of the lost visual dependence (interval's lower end)
TIE = 0.05  # restored shares this close count as tied; the smaller component ranks first
# observational lines of the comparison report, by the candidate they speak about (prefix of the line)
EVIDENCE: dict[str, tuple[str, ...]] = {
    "projector": ("projector drift",),
    QK: ("attention", "key space", "sinks"),
    "decoder": ("probes", "mir", "cka"),
    "embed": ("vocabulary",),
}


def candidates(adapter: ModelAdapter) -> dict[str, tuple[str, ...]]:
    """The candidate causes, fixed before any run: label -> probe.models.swap component names."""
    n = adapter.num_layers
    half = max(1, n // 2)
    out = {"vision": ("vision",), "projector": ("projector",), "embed": ("embed",)}
    try:
        parameters_of(adapter, QK)
        out[QK] = (QK,)
    except ValueError:
        pass  # a family without separate q/k projections: the attention candidate is the layers themselves
    out[f"lm.layer.0:{half}"] = (f"lm.layer.0:{half}",)
    if half < n:
        out[f"lm.layer.{half}:{n}"] = (f"lm.layer.{half}:{n}",)
    out["decoder"] = ("lm.layer.0:", "final_norm", "lm_head")
    return out


def same_architecture(before: ModelAdapter, after: ModelAdapter, names: tuple[str, str]) -> None:
    """Refuse, in one line, two models whose parameters do not match name for name and shape for shape."""
    a = {q: tuple(p.shape) for q, p in before.base_model.named_parameters()}
    b = {q: tuple(p.shape) for q, p in after.base_model.named_parameters()}
    if before.name != after.name or a != b:
        diff = sorted(set(a) ^ set(b)) or [q for q in a if a[q] != b.get(q)]
        where = f" (first difference: {diff[0]})" if diff else ""
        raise ValueError(f"{names[0]} ({before.name}) and {names[1]} ({after.name}) are not one architecture{where}: "
                         "component swaps need the same architecture")


def select(examples: Sequence[Example], images: int, question_types: Sequence[str] | None = None) -> list[Example]:
    """Image-dependent examples with answers (of `question_types`, all when None), of the first `images` images in
    file order (fixed before results)."""
    keep = [e for e in examples if e.image_dependent is not False and e.answer is not None and e.image is not None
            and (not question_types or e.question_type in question_types)]
    first = list(dict.fromkeys(unit_of(e) for e in keep))[:images]
    chosen = set(first)
    return [e for e in keep if unit_of(e) in chosen]


def _weight_change(before: ModelAdapter, after: ModelAdapter, components: tuple[str, ...]) -> tuple[int, float]:
    a, b = parameters_of(before, components), parameters_of(after, components)
    n = sum(p.numel() for p in b.values())
    num = sum(float((b[q].detach().double() - a[q].detach().double()).norm() ** 2) for q in b)
    den = sum(float(a[q].detach().double().norm() ** 2) for q in b)
    return n, (num ** 0.5) / (den ** 0.5) if den else 0.0


def _evidence(label: str, verdict: list[str]) -> list[str]:
    key = "decoder" if label.startswith("lm.layer.") else label
    prefixes = EVIDENCE.get(key, ())
    return [line for line in verdict if line.lower().startswith(prefixes)] if prefixes else []


def _vd(hits: np.ndarray, examples: list[Example]) -> dict[str, float]:
    langs = sorted({e.lang for e in examples})
    return {lg: float(np.mean([h for h, e in zip(hits, examples) if e.lang == lg])) for lg in langs}


def diagnose(before: str | Path, after: str | Path, manifest: str | Path, out: str | Path, *, images: int = 40,
             question_types: Sequence[str] | None = None, share: float = SHARE, analyses: bool = True,
             seed: int = 0, n_boot: int = 1000,
             batch_rows: int = 64, progress: bool = False) -> Diagnosis:
    """Diagnose why AFTER lost BEFORE's visual dependence on MANIFEST's image-dependent questions; writes out/.

    out/diagnosis.json (probe.diagnose.result), out/diagnosis.html, and with `analyses` the captures
    out/before.zarr, out/after.zarr and the comparison report out/report.html (probe.report.compare).
    """
    if not 0 < share <= 1:
        raise ValueError(f"diagnose: share must be in (0, 1], got {share}")
    out = Path(out)
    b, a = load_model(before), load_model(after)
    same_architecture(b, a, (str(before), str(after)))
    examples = select(read_manifest(manifest), images, question_types)
    if len({e.lang for e in examples}) == 0 or len(examples) < 2:
        raise ValueError(f"{manifest}: fewer than 2 image-dependent questions with answers and images to diagnose on")
    out.mkdir(parents=True, exist_ok=True)
    boot = BootstrapConfig(n_boot=n_boot, seed=seed)
    verdict: list[str] = []
    report = ""
    if analyses:
        verdict, report = _analyses(b, a, examples, out, progress)
    p = plan(examples, seed)
    units = [unit_of(e) for e in examples]
    for m in (a, b):
        m.model.eval()
    hb = visually_dependent(b, p, batch_rows=batch_rows)
    ha = visually_dependent(a, p, batch_rows=batch_rows)
    tests: list[tuple[str, str, str, tuple[str, ...], np.ndarray]] = []  # (name, kind, target, components, hits)
    for label, comps in candidates(a).items():
        with swapped(a, b, comps):
            tests.append((f"swap {label}", "swap", label, comps, visually_dependent(a, p, batch_rows=batch_rows)))
    with swapped(a, b, "all"):
        tests.append(("swap all (control)", "control", "all", ("all",), visually_dependent(a, p, batch_rows=batch_rows)))
    for where in WHERE:
        for layer in range(-1, a.num_layers):
            hits = visually_dependent(a, p, batch_rows=batch_rows, source=b, layer=layer, where=where)
            at = "input" if layer < 0 else f"layer {layer}"
            tests.append((f"patch {where} after {at}", "patch", f"{where}@{layer}", (), hits))
    point, low, high = cluster_restored_ci(hb, ha, np.stack([t[4] for t in tests]), units, boot)
    effects = []
    for (name, kind, target, comps, hits), r, lo, hi in zip(tests, point, low, high):
        n_params, rel = _weight_change(b, a, comps) if comps else (0, 0.0)
        ev = [f"weights: relative change {rel:.3g} over {n_params:,} parameters"] if comps else []
        effects.append(Effect(name=name, kind=kind, target=target, restored=float(r), low=float(lo), high=float(hi),
                              vd=_vd(hits, examples), n_params=n_params, evidence=ev + _evidence(target, verdict)))
    ranked = rank([e for e in effects if e.kind == "swap"])
    named, reason = decide(ranked, share, float(hb.mean()) - float(ha.mean()))
    result = Diagnosis(
        before=str(before), after=str(after), manifest=str(manifest), examples=len(examples), units=len(set(units)),
        share=share, behaviour={"before": _vd(hb, examples), "after": _vd(ha, examples)}, ranked=ranked,
        patches=[e for e in effects if e.kind == "patch"], controls=[e for e in effects if e.kind == "control"],
        named=named, reason=reason, verdict=verdict, report=report,
        dashboard=(f"probe dashboard {out} then open http://127.0.0.1:8501/?before=before.zarr&after=after.zarr"
                   "&view=overview") if analyses else "",
        config={"images": images, "question_types": list(question_types or []), "seed": seed, "n_boot": n_boot, "tie": TIE, "analyses": analyses},
    )
    write_diagnosis(result, out)
    (out / "diagnosis.html").write_text(render_html(result), encoding="utf-8")
    return result


def rank(effects: list[Effect]) -> list[Effect]:
    """Highest restored share first; shares within TIE of each other rank the smaller component first."""
    ordered = sorted(effects, key=lambda e: -np.nan_to_num(e.restored, nan=-np.inf))
    out: list[Effect] = []
    while ordered:
        top = ordered[0].restored
        tied = [e for e in ordered if np.isfinite(top) and np.isfinite(e.restored) and top - e.restored <= TIE]
        tied = tied or [ordered[0]]
        tied.sort(key=lambda e: (e.n_params, -e.restored))
        out += tied
        ordered = [e for e in ordered if e not in tied]
    return out


def decide(ranked: list[Effect], share: float, gap: float) -> tuple[str, str]:
    """The named cause and why: the first ranked candidate whose interval's lower end is >= share."""
    if gap <= 0:
        return "no single cause", "AFTER lost no visual dependence on these examples: nothing to attribute"
    for e in ranked:
        if np.isfinite(e.low) and e.low >= share:
            return e.target, (f"swapping BEFORE's {e.target} into AFTER restores {e.restored:.0%} "
                              f"[{e.low:.0%}, {e.high:.0%}] of the lost visual dependence (>= {share:.0%} required)")
    best = ranked[0] if ranked else None
    more = f"; best: {best.target} {best.restored:.0%} [{best.low:.0%}, {best.high:.0%}]" if best else ""
    return "no single cause", f"no single component restores {share:.0%} of the lost visual dependence{more}"


def _analyses(b: ModelAdapter, a: ModelAdapter, examples: list[Example], out: Path, progress: bool) -> tuple[list[str], str]:
    """Behaviour tables and captures of both models, then the comparison report (probe.report.compare)."""
    from probe.capture import CaptureSpec, capture
    from probe.eval.dependence import evaluate_dependence, save_dependence
    from probe.report import compare

    spec = CaptureSpec(keys=True, resid=("query", "pooled", "tokens"), projector=True, vision=True, vocab=True,
                       dtype="float32", batch_size=32)
    for name, adapter in (("before", b), ("after", a)):
        store = out / f"{name}.zarr"
        ds = evaluate_dependence(adapter, examples, batch_size=64, progress=progress)
        capture(adapter, examples, store, spec, progress=progress)
        save_dependence(ds, store)
    summary = compare(out / "before.zarr", out / "after.zarr", out / "report.html", out / "report.json")
    return list(summary.get("verdict", [])), "report.html"


def render_html(d: Diagnosis) -> str:
    """diagnosis.html: the named cause, the ranked attribution, the patches and the observational lines."""
    esc = html.escape

    def pct(x: float) -> str:
        return "n/a" if not np.isfinite(x) else f"{x:.0%}"

    def table(rows: list[Effect], evidence: bool) -> str:
        head = "<tr><th>#</th><th>test</th><th>restored [95%]</th><th>VD under edit</th>" + \
               ("<th>parameters</th><th>observational evidence</th>" if evidence else "") + "</tr>"
        body = ""
        for i, e in enumerate(rows, 1):
            vd = ", ".join(f"{k} {v:.0%}" for k, v in e.vd.items())
            body += (f"<tr><td>{i}</td><td>{esc(e.name)}</td><td>{pct(e.restored)} [{pct(e.low)}, {pct(e.high)}]</td>"
                     f"<td>{esc(vd)}</td>" + (f"<td>{e.n_params:,}</td><td>{'<br>'.join(esc(x) for x in e.evidence)}</td>"
                                             if evidence else "") + "</tr>")
        return f"<table border=1 cellpadding=4>{head}{body}</table>"

    beh = "".join(f"<li>{esc(k)}: " + ", ".join(f"{lg} {v:.0%}" for lg, v in vd.items()) + "</li>"
                  for k, vd in d.behaviour.items())
    link = f"<p>Comparison report: <a href='{esc(d.report)}'>{esc(d.report)}</a></p>" if d.report else ""
    dash = f"<p>Dashboard: <code>{esc(d.dashboard)}</code></p>" if d.dashboard else ""
    lines = "".join(f"<li>{esc(v)}</li>" for v in d.verdict)
    return (f"<!doctype html><meta charset='utf-8'><title>visblind diagnosis</title><h1>Diagnosis</h1>"
            f"<p>before: {esc(d.before)}<br>after: {esc(d.after)}<br>{d.examples} examples, {d.units} images "
            f"({esc(d.manifest)})</p><h2>Named cause: {esc(d.named)}</h2><p>{esc(d.reason)}</p>"
            f"<p>Rule (fixed before the run): a component is a cause when BEFORE's copy restores at least "
            f"{d.share:.0%} of the lost visual dependence at the lower end of its 95% interval (cluster bootstrap "
            f"over images); ties within {TIE:.0%} rank the smaller component first.</p>"
            f"<h2>Behaviour (visual dependence)</h2><ul>{beh}</ul>"
            f"<h2>Ranked attribution (component swaps)</h2>{table(d.ranked, True)}"
            f"<h2>Controls</h2>{table(d.controls, False)}"
            f"<h2>Where: residual patches (BEFORE's residual written into AFTER)</h2>{table(d.patches, False)}"
            f"<h2>Observational lines of the comparison report</h2><ul>{lines}</ul>{link}{dash}")


def diagnosis_json(d: Diagnosis) -> str:
    """The result as JSON text (for --json output)."""
    return json.dumps(asdict(d), indent=1, ensure_ascii=False)


__all__ = ["SHARE", "candidates", "decide", "diagnose", "rank", "render_html", "same_architecture", "select"]
