"""The self-contained offline HTML report (plotly.js inline, no CDN) and its JSON summary, looping over the analysis registry."""

from __future__ import annotations

import html as _html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from probe.analysis.pipeline import AnalysisConfig, Skipped, analyze, compare_stores, save_results
from probe.analysis.saved import COMPARE
from probe.analysis import registry
from probe.report import summary as S
from probe.report.examples import example_figures
from probe.report.presenters import presenter
from probe.report.verdict import verdict

_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2em}.reading{font-weight:600;background:#f4f6fa;padding:.5em;border-left:4px solid #1f77b4}
.warn{background:#fff4e5;padding:.5em;border-left:4px solid #e69500}
.skip{color:#888;font-style:italic}.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(0,1fr));gap:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"""


class _Page:
    """Accumulates sections; the first figure carries plotly.js inline."""

    def __init__(self, title: str) -> None:
        self.title, self.parts, self._js = title, [], True

    def section(self, heading: str, reading: str | None = None, items: list[Any] = ()) -> None:
        self.parts.append(f"<h2>{_html.escape(heading)}</h2>")
        if reading:
            self.parts.append(f"<p class='reading'>{_html.escape(reading)}</p>")
        for item in items:
            if isinstance(item, go.Figure):
                self.parts.append(self.figure(item))
            else:
                self.parts.append(str(item))

    def figure(self, fig: go.Figure) -> str:
        """One figure's HTML (plotly.js inline with the page's first figure)."""
        out = pio.to_html(fig, include_plotlyjs=self._js, full_html=False)
        self._js = False
        return out

    def skip(self, heading: str, note: str) -> None:
        self.parts.append(f"<h2>{_html.escape(heading)}</h2><p class='skip'>{_html.escape(note)}</p>")

    def render(self, header: str) -> str:
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{_html.escape(self.title)}</h1>{header}{''.join(self.parts)}</body></html>")


def _describe(obj: Any) -> str:
    if isinstance(obj, (str, Path)):
        return str(obj)
    if hasattr(obj, "path") and hasattr(obj, "n_examples"):  # a TraceStore opened by the caller
        return str(obj.path)
    ds = getattr(obj, "dataset", obj)
    return f"{ds.attrs.get('model_id', '?')} ({ds.sizes.get('example', '?')} examples)"


def _sections(page: _Page, res: dict[str, Any], config: AnalysisConfig, pair: bool) -> dict[str, str]:
    """One section per registered analysis; returns the readings written."""
    readings = {}
    for a in registry.ANALYSES:
        if (a.pair if pair else a.single) is None or a.name not in res:
            continue
        r = res[a.name]
        if isinstance(r, Skipped):
            page.skip(a.heading, r)
            continue
        shown = presenter(a.name)
        read = shown.reading_pair if pair else shown.reading_single
        fig = shown.figure_pair if pair else shown.figure_single
        text = read(r, config) if read is not None else None
        if text:
            readings[a.name] = text
        page.section(a.heading, text, fig(r) if fig is not None else [])
    return readings


def _pair_fields(res: dict[str, Any], config: AnalysisConfig) -> dict[str, Any]:
    """The summary fields of one before/after comparison: verdict lines, eval tables, skipped notes, results."""
    fields: dict[str, Any] = {"verdict": verdict(res, config)}
    if isinstance(res.get("eval"), dict):
        fields["eval"] = {k: S.eval_table(v) for k, v in res["eval"].items()}
    fields["skipped"] = [str(v) for v in res.values() if isinstance(v, Skipped)]
    fields["results"] = {k: v for k, v in res.items() if k not in ("eval", "intersection")}
    return fields


def _resampling_note(res: dict[str, Any]) -> str:
    for key in ("collapse", "visual_share", "drift", "probes"):
        r = res.get(key)
        r = r["layers"] if isinstance(r, dict) and "layers" in r else r
        what = getattr(r, "attrs", {}).get("resampled")
        if what:
            return f"Intervals resample independent units: {what}."
    return ""


def _save(summary: dict[str, Any], page: _Page, header: str, out_html: str | Path, out_json: str | Path | None) -> dict[str, Any]:
    Path(out_html).write_text(page.render(header), encoding="utf-8")
    summary = S.jsonable(summary)
    if out_json is not None:
        Path(out_json).write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return summary


def compare(
    before: Any, after: Any, out_html: str | Path, out_json: str | Path | None = None, config: AnalysisConfig = AnalysisConfig(),
    intersect: bool = False, save_to: Any = None, manifests: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Write the before-vs-after HTML report (and JSON summary); return the summary dict.

    `manifests`: JSONL manifests that hold the examples' images, for the example pictures (without them, or when
    the store records no image paths, the attention is painted on a grey canvas of the image's size).
    Incomparable stores raise IncomparableStoresError (one line, nothing written) unless
    `intersect`, which compares on their explicit intersection and says so at the top.
    `save_to`: a TraceStore that receives every result as group `compare/<name>` with the config and the
    fingerprints of both stores (read back by `probe.report.verdict.saved_verdict`, e.g. by the dashboard).
    """
    res = compare_stores(before, after, config, intersect_=intersect)
    page = _Page("visblind: before vs after")
    summary: dict[str, Any] = {"before": _describe(before), "after": _describe(after),
                               "created": datetime.now(timezone.utc).isoformat(), "config": config.to_dict(),
                               "intersection": res["intersection"]}
    summary |= _pair_fields(res, config)
    page.section("Summary: which candidate causes moved", None,
                 ["<ul>" + "".join(f"<li>{_html.escape(line)}</li>" for line in summary["verdict"]) + "</ul>"])
    summary["readings"] = _sections(page, res, config, pair=True)
    page.section("Examples: the last prompt token's attention on the image, before and after", None,
                 example_figures(before, after, manifests))
    header = f"<p>before: {_html.escape(summary['before'])}<br>after: {_html.escape(summary['after'])}<br>created {summary['created']}<br>"
    header += _html.escape(_resampling_note(res)) + "</p>"
    if save_to is not None:
        summary["saved_groups"] = save_results(save_to, res, config, prefix=COMPARE, sources={"before": before, "after": after},
                                               headline=summary["verdict"])
    if res["intersection"]:
        header = ("<p class='warn'><b>Compared on the explicit intersection of two stores that differ:</b> "
                  + "; ".join(_html.escape(n) for n in res["intersection"]) + "</p>" + header)
    return _save(summary, page, header, out_html, out_json)


def report(
    store: Any, out_html: str | Path, out_json: str | Path | None = None, config: AnalysisConfig = AnalysisConfig(),
    baseline: Any = None, intersect: bool = False, save: bool = False,
) -> dict[str, Any]:
    """Single-store HTML report of analyze() (and JSON summary); return the summary dict.

    With a `baseline`, the pair is checked for comparability first (see compare). `save`: write
    every result into the store as group `analysis/<name>` with the config.
    """
    res = analyze(store, config, baseline=baseline, intersect_=intersect)
    page = _Page("visblind: store analysis")
    summary: dict[str, Any] = {"store": _describe(store), "config": config.to_dict()}
    summary["readings"] = _sections(page, res, config, pair=False)
    summary["results"] = {k: v for k, v in res.items()}
    if save:
        summary["saved_groups"] = save_results(store, res, config)
    header = f"<p>{_html.escape(summary['store'])}<br>{_html.escape(_resampling_note(res))}</p>"
    return _save(summary, page, header, out_html, out_json)


def compare_side_by_side(
    before: Any, afters: Mapping[str, Any], out_html: str | Path, out_json: str | Path | None = None,
    config: AnalysisConfig = AnalysisConfig(), extra: Sequence[tuple[str, str | None, Mapping[str, list[Any]]]] = (),
) -> dict[str, Any]:
    """Several before-vs-after comparisons with one `before`, shown together: one column per `afters` entry.

    Each pair is exactly `compare`'s (compare_stores, the registry's verdicts, readings and figures); the page
    puts every analysis's readings and figures side by side, the verdict lines in one table. `extra`: further
    sections as (heading, reading, {column: items}) — figures or HTML — placed after the analyses.
    Returns the summary: {"before", "created", "config", "comparisons": {name: compare's summary fields}}.
    """
    names = list(afters)
    if not names:
        raise ValueError("compare_side_by_side: no stores to compare with")
    res = {n: compare_stores(before, afters[n], config) for n in names}
    page = _Page("visblind: " + " | ".join(f"before vs {n}" for n in names))
    summary: dict[str, Any] = {"before": _describe(before), "created": datetime.now(timezone.utc).isoformat(),
                               "config": config.to_dict(), "comparisons": {}}
    for n in names:
        summary["comparisons"][n] = {"after": _describe(afters[n]), "readings": {}} | _pair_fields(res[n], config)
    cell = lambda items: "".join(page.figure(i) if isinstance(i, go.Figure) else str(i) for i in items)  # noqa: E731
    head = "".join(f"<th>{_html.escape(n)}</th>" for n in names)
    rows = max(len(summary["comparisons"][n]["verdict"]) for n in names)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{_html.escape(v[i]) if i < len(v) else ''}</td>"
                                    for v in (summary["comparisons"][n]["verdict"] for n in names)) + "</tr>"
                   for i in range(rows))
    page.section("Summary: which candidate causes moved, per comparison", None, [f"<table><tr>{head}</tr>{body}</table>"])
    for a in registry.ANALYSES:
        if a.pair is None or not any(a.name in res[n] for n in names):
            continue
        read, fig = presenter(a.name).reading_pair, presenter(a.name).figure_pair
        columns = []
        for n in names:
            r = res[n].get(a.name)
            if r is None or isinstance(r, Skipped):
                columns.append(f"<h3>{_html.escape(n)}</h3><p class='skip'>{_html.escape(str(r or 'not computed'))}</p>")
                continue
            text = read(r, config) if read is not None else None
            if text:
                summary["comparisons"][n]["readings"][a.name] = text
            reading = f"<p class='reading'>{_html.escape(text)}</p>" if text else ""
            columns.append(f"<h3>{_html.escape(n)}</h3>{reading}{cell(fig(r) if fig is not None else [])}")
        page.section(a.heading, None, ["<div class='cols'>" + "".join(f"<div>{c}</div>" for c in columns) + "</div>"])
    for heading, reading, cols in extra:
        page.section(heading, reading, ["<div class='cols'>" + "".join(
            f"<div><h3>{_html.escape(n)}</h3>{cell(items)}</div>" for n, items in cols.items()) + "</div>"])
    header = f"<p>before: {_html.escape(summary['before'])}<br>" + "<br>".join(
        f"{_html.escape(n)}: {_html.escape(summary['comparisons'][n]['after'])}" for n in names)
    header += f"<br>created {summary['created']}<br>{_html.escape(_resampling_note(res[names[0]]))}</p>"
    return _save(summary, page, header, out_html, out_json)
