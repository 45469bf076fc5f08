"""How each registered analysis is shown: its figures, its one-line reading and its verdict lines, by analysis name.

The analysis registry (`probe.analysis.registry.ANALYSES`) says what is computed; this table says how the report
and the headline show it. An analysis without an entry here is computed and saved but shown with no figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probe.report import figures as F
from probe.report import summary as S
from probe.report import verdict as V


@dataclass(frozen=True)
class Presenter:
    """Figures (result -> list of plotly figures / HTML), reading (result, config -> one line), verdict (pair only)."""

    figure_single: Callable[[Any], list] | None = None
    figure_pair: Callable[[Any], list] | None = None
    reading_single: Callable[[Any, Any], str] | None = None
    reading_pair: Callable[[Any, Any], str] | None = None
    verdict: Callable[[Any, Any], list[str]] | None = None


PRESENTERS: dict[str, Presenter] = {
    "eval": Presenter(figure_single=S.eval_tables, figure_pair=S.eval_tables, verdict=V.behaviour_lines),
    "visual_share": Presenter(figure_single=F.visual_share_figures),
    "collapse": Presenter(figure_pair=F.collapse_figures, reading_pair=S.reading_collapse, verdict=V.attention_lines),
    "sinks": Presenter(figure_single=S.mean_over_heads_table, figure_pair=F.sink_figures, reading_pair=S.reading_sinks,
                       verdict=V.sinks_lines),
    "keyspace": Presenter(figure_single=S.mean_over_heads_table, figure_pair=F.keyspace_figures,
                          reading_pair=S.reading_keyspace, verdict=V.keyspace_lines),
    "probes": Presenter(figure_single=F.probe_figures, figure_pair=F.probe_figures, reading_single=S.reading_probes,
                        reading_pair=S.reading_probes, verdict=V.probe_lines),
    "drift": Presenter(figure_pair=F.drift_figures, reading_pair=S.reading_drift, verdict=V.drift_lines),
    "vocab_drift": Presenter(figure_pair=F.vocab_figures, reading_pair=S.reading_vocab_drift),
    "mir": Presenter(figure_single=F.mir_figures, figure_pair=F.mir_figures, reading_single=S.reading_mir,
                     reading_pair=S.reading_mir),
    "cka": Presenter(figure_single=F.cka_figures, figure_pair=F.cka_figures, reading_single=S.reading_cka,
                     reading_pair=S.reading_cka),
    "projector_vision_cka": Presenter(reading_single=S.reading_projector_vision_cka,
                                      reading_pair=S.reading_projector_vision_cka),
}

_NONE = Presenter()


def presenter(name: str) -> Presenter:
    """The presenter of the analysis called `name` (an empty one when the report has none)."""
    return PRESENTERS.get(name, _NONE)
