"""The self-contained offline HTML report (plotly.js inline, no CDN) and its JSON summary."""

from __future__ import annotations

import html as _html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from probe.analysis.pipeline import AnalysisConfig, Skipped, analyze, compare_stores
from probe.report import figures as F
from probe.report import summary as S
from probe.report.verdict import verdict

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2em}.reading{font-weight:600;background:#f4f6fa;padding:.5em;border-left:4px solid #1f77b4}
.skip{color:#888;font-style:italic}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"""


class _Page:
    """Accumulates sections; the first figure carries plotly.js inline."""

    def __init__(self, title: str) -> None:
        self.title, self.parts, self._js = title, [], True

    def section(self, heading: str, reading: str | None = None, fig: go.Figure | None = None, body: str = "") -> None:
        self.parts.append(f"<h2>{_html.escape(heading)}</h2>")
        if reading:
            self.parts.append(f"<p class='reading'>{_html.escape(reading)}</p>")
        if body:
            self.parts.append(body)
        if fig is not None:
            self.parts.append(pio.to_html(fig, include_plotlyjs=self._js, full_html=False))
            self._js = False

    def skip(self, heading: str, note: str) -> None:
        self.parts.append(f"<h2>{_html.escape(heading)}</h2><p class='skip'>{_html.escape(note)}</p>")

    def render(self, header: str) -> str:
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{_html.escape(self.title)}</h1>{header}{''.join(self.parts)}</body></html>")


def _table(rows: dict[str, dict[str, float]], label: str) -> str:
    if not rows:
        return ""
    cols = sorted({c for r in rows.values() for c in r})
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{_html.escape(k)}</th>" + "".join(f"<td>{r.get(c, float('nan')):.3f}</td>" for c in cols) + "</tr>"
        for k, r in rows.items()
    )
    return f"<h3>{_html.escape(label)}</h3><table><tr><th></th>{head}</tr>{body}</table>"


def _describe(obj: Any) -> str:
    if isinstance(obj, (str, Path)):
        return str(obj)
    ds = getattr(obj, "dataset", obj)
    return f"{ds.attrs.get('model_id', '?')} ({ds.sizes.get('example', '?')} examples)"


def compare(
    before: Any, after: Any, out_html: str | Path, out_json: str | Path | None = None, config: AnalysisConfig = AnalysisConfig()
) -> dict[str, Any]:
    """Write the before-vs-after HTML report (and JSON summary); return the summary dict."""
    res = compare_stores(before, after, config)
    page = _Page("visblind: before vs after")
    summary: dict[str, Any] = {"before": _describe(before), "after": _describe(after), "created": datetime.now(timezone.utc).isoformat(), "readings": {}}
    ci = config.bootstrap.ci
    summary["verdict"] = verdict(res, config.bootstrap)
    page.section("Summary: which candidate causes moved", None, None,
                 "<ul>" + "".join(f"<li>{_html.escape(line)}</li>" for line in summary["verdict"]) + "</ul>")

    c = res["collapse"]
    if isinstance(c, Skipped):
        page.skip("Visual attention collapse", c)
    else:
        sources = [str(s) for s in c["source"].values]
        readings = [S.reading_collapse(res["collapse_band"][s], s, ci) for s in sources]
        summary["readings"]["collapse"] = readings
        page.section("Visual attention collapse", " · ".join(readings), F.collapse_layers(c))
        page.section("Per-head change", None, F.collapse_heatmap(c, sources[0]))
        top = res["top_heads"].to_dataframe().reset_index()
        page.section("Heads that changed most", None, None, top.round(4).to_html(index=False))
    s = res["sinks"]
    if isinstance(s, Skipped):
        page.skip("Visual attention sinks", s)
    else:
        src = str(s["source"].values[0])
        summary["readings"]["sinks"] = S.reading_sinks(s, src)
        page.section("Visual attention sinks", summary["readings"]["sinks"], F.sink_bars(s, src))
    for key, heading, reader, fig in (
        ("keyspace", "Key-space OOD of visual keys", S.reading_keyspace, F.keyspace_lines),
        ("probes", "Linear probes (information gone vs unused)", S.reading_probes, F.probe_lines),
        ("mir", "Modality integration rate", S.reading_mir, F.mir_lines),
    ):
        r = res[key]
        if isinstance(r, Skipped):
            page.skip(heading, r)
        else:
            summary["readings"][key] = reader(r)
            page.section(heading, summary["readings"][key], fig(r))
    d = res["drift"]
    if isinstance(d, Skipped):
        page.skip("Projector drift", d)
    else:
        summary["readings"]["drift"] = S.reading_drift(d, config.bootstrap)
        page.section("Projector drift", summary["readings"]["drift"], F.drift_hist(d))
    v = res["vocab_drift"]
    if isinstance(v, Skipped):
        page.skip("Projector drift relative to the vocabulary", v)
    else:
        summary["readings"]["vocab_drift"] = S.reading_vocab_drift(v)
        page.section("Projector drift relative to the vocabulary", summary["readings"]["vocab_drift"], F.vocab_script_bars(v))
    m = res["cka"]
    if isinstance(m, Skipped):
        page.skip("CKA before vs after", m)
    else:
        summary["readings"]["cka"] = S.reading_cka(m)
        page.section("CKA before vs after", summary["readings"]["cka"], F.cka_heatmap(m, "Linear CKA, before (a) vs after (b)"))
    pv = res["projector_vision_cka"]
    if isinstance(pv, Skipped):
        page.skip("CKA projector output vs vision tower", pv)
    else:
        summary["readings"]["projector_vision_cka"] = (
            f"linear CKA of example-pooled projector output vs vision tower output {pv['before']:.3f} → {pv['after']:.3f}")
        page.section("CKA projector output vs vision tower", summary["readings"]["projector_vision_cka"])
    ev = res["eval"]
    if isinstance(ev, Skipped):
        page.skip("Behavioural visual dependence", ev)
    else:
        tables = {k: S.eval_table(v) for k, v in ev.items()}
        summary["eval"] = tables
        page.section("Behavioural visual dependence", None, None, "".join(_table(t, k) for k, t in tables.items()))
    summary["skipped"] = [str(v) for v in res.values() if isinstance(v, Skipped)]
    summary["results"] = S.jsonable({k: v for k, v in res.items() if k != "eval"})
    header = f"<p>before: {_html.escape(summary['before'])}<br>after: {_html.escape(summary['after'])}<br>created {summary['created']}</p>"
    Path(out_html).write_text(page.render(header), encoding="utf-8")
    if out_json is not None:
        Path(out_json).write_text(json.dumps(S.jsonable(summary), indent=1, ensure_ascii=False), encoding="utf-8")
    return S.jsonable(summary)


def report(store: Any, out_html: str | Path, out_json: str | Path | None = None, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Single-store HTML report of analyze() (and JSON summary); return the summary dict."""
    res = analyze(store, config)
    page = _Page("visblind: store analysis")
    for key, heading, fig in (
        ("visual_share", "Visual attention share", lambda r: F.visual_share_heatmap(r, str(r["source"].values[0]))),
        ("probes", "Linear probes", F.probe_lines),
        ("mir", "Modality integration rate", F.mir_lines),
        ("cka", "CKA layer × layer", F.cka_heatmap),
    ):
        r = res[key]
        page.skip(heading, r) if isinstance(r, Skipped) else page.section(heading, None, fig(r))
    pv = res["projector_vision_cka"]
    if isinstance(pv, Skipped):
        page.skip("CKA projector output vs vision tower", pv)
    else:
        page.section("CKA projector output vs vision tower", f"linear CKA of example-pooled tokens {pv:.3f}")
    for key, heading in (("sinks", "Visual attention sinks"), ("keyspace", "Key-space OOD")):
        r = res[key]
        if isinstance(r, Skipped):
            page.skip(heading, r)
        else:
            page.section(heading, None, None, r.mean([d for d in r.dims if d not in ("layer",)]).to_dataframe().round(4).to_html())
    ev = res["eval"]
    if not isinstance(ev, Skipped):
        page.section("Behavioural visual dependence", None, None, _table(S.eval_table(ev), "store"))
    summary = {"store": _describe(store), "results": S.jsonable({k: v for k, v in res.items()})}
    Path(out_html).write_text(page.render(f"<p>{_html.escape(summary['store'])}</p>"), encoding="utf-8")
    if out_json is not None:
        Path(out_json).write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return summary
