"""Reports: plotly figures, the offline HTML report and its JSON summary."""

from probe.report.html import compare, report

__all__ = ["compare", "report"]
