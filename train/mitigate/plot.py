"""The per-step loss terms and drift of a mitigation run (its steps.jsonl) as one plotly figure beside the run."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

FIGURE = "steps.html"
# (panel, keys): the loss terms as added to the total (already scaled by their share of the batch), then the drift
PANELS = (("loss terms", ("loss", "task", "drift", "contrast", "align")),
          ("drift of the anchors", ("drift_mmd_v", "drift_w_embed")),
          ("alignment weight λ3·(1 + α·drift)", ("align_weight",)))


def read_steps(path: str | Path) -> list[dict]:
    """The rows of a steps.jsonl (one per optimizer step)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def steps_figure(rows: list[dict], title: str = "") -> go.Figure:
    """One trace per logged quantity against the step, in three panels; quantities the run did not log are left out."""
    panels = [(name, [k for k in keys if any(k in r for r in rows)]) for name, keys in PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=[p for p, _ in panels],
                        vertical_spacing=0.08)
    for i, (_, keys) in enumerate(panels, start=1):
        for key in keys:
            got = [r for r in rows if key in r]
            fig.add_trace(go.Scatter(x=[r["step"] for r in got], y=[r[key] for r in got], name=key, mode="lines",
                                     legendgroup=str(i)), row=i, col=1)
    fig.update_xaxes(title_text="step", row=len(panels), col=1)
    fig.update_layout(title=title or "loss terms and drift per step", height=280 * len(panels))
    return fig


def write_steps_figure(stage_dir: str | Path, title: str = "") -> Path | None:
    """Write stage_dir/steps.html (plotly.js inline, offline) from stage_dir/steps.jsonl; None when there is no log."""
    folder = Path(stage_dir)
    log = folder / "steps.jsonl"
    if not log.is_file():
        return None
    out = folder / FIGURE
    steps_figure(read_steps(log), title).write_html(out, include_plotlyjs=True, full_html=True)
    return out
