"""Reports: plotly figures, the offline HTML report and its JSON summary."""

from probe.report.html import compare, compare_side_by_side, report

__all__ = ["compare", "compare_side_by_side", "report"]
