"""`interventions run`'s summary table: readable at 80 columns, every statistic in its JSON/CSV rows (issue 24)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from rich.console import Console

from interventions.cli import summary_rows
from probe.tables import rich_table


def test_summary_table_fits_80_columns_with_long_condition_names() -> None:
    conditions = ["baseline", "attention_redistribution(alpha=0.5, layers=[2, 3], source=last_prompt)", "visual_boost(x4)"]
    rng = np.random.default_rng(0)
    data = {f"{k}{s}": (("condition", "example_lang"), rng.uniform(0, 1, (3, 2)))
            for k in ("visual_dependence", "accuracy_image", "accuracy_text") for s in ("", "_low", "_high")}
    data["accuracy_text"][1][0, 1] = np.nan
    summary = xr.Dataset(data, coords={"condition": conditions, "example_lang": ["en", "ko"]})
    rows, columns, cells = summary_rows(summary)
    assert len(rows) == 6 and rows[1]["example_lang"] == "ko" and rows[0]["visual_dependence"] == data["visual_dependence"][1][0, 0]
    console = Console(width=80, record=True)
    console.print(rich_table("t", columns, rows, "", cells))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    assert text.count("attention_redistribution(alpha=0.5,") == 2 and text.count("source=last_prompt)") == 2  # wrapped
