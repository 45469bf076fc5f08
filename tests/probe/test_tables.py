"""Printed tables are readable at 80 columns (no cell cut with '…') and the same rows are written as JSON/CSV (issue 24)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from probe.cli import app
from probe.tables import Column, rich_table, write_rows


def _answered_manifest(folder: Path, make_colour_manifest) -> Path:
    path = make_colour_manifest(folder, 16)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for r in rows:  # every example answered; a mixed scoring (open Korean words) makes long notes
        r["answer"] = r["answer"] or r["labels"]["colour"]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _fits(text: str, width: int = 80) -> None:
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= width, text


def test_probe_eval_table_fits_80_columns_and_is_written_as_json_and_csv(tiny_llava_dir, make_colour_manifest,
                                                                          tmp_path) -> None:
    manifest = _answered_manifest(tmp_path / "m", make_colour_manifest)
    j, c = tmp_path / "t.json", tmp_path / "t.csv"
    res = CliRunner().invoke(app, ["eval", str(tiny_llava_dir), str(manifest), "--json", str(j), "--csv", str(c)],
                             env={"COLUMNS": "80", "TERM": "dumb"})
    assert res.exit_code == 0, res.output
    table = res.output[res.output.index("visual dependence"): res.output.index("table written")]
    _fits(table)
    rows = json.loads(j.read_text(encoding="utf-8"))["rows"]
    with c.open(encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert [r["lang"] for r in rows] == [r["lang"] for r in back] and {r["lang"] for r in rows} == {"en", "ko"}
    for r, b in zip(rows, back):
        assert r["n"] == int(b["n"]) and r["scoring"] == b["scoring"]
        assert r["real"] == pytest.approx(float(b["real"]), rel=1e-12)  # full precision, not the printed 1 decimal
        assert f"{100 * r['real']:.1f}%" in table
        assert r["real_low"] <= r["real"] <= r["real_high"]


def test_long_cells_wrap_instead_of_ending_in_an_ellipsis() -> None:
    cols = [Column("a", justify="left"), Column("b"), Column("hidden", terminal=False)]
    rows = [{"a": "x" * 70, "b": "a-rather-long-cell-without-spaces-" * 2, "hidden": 1.5}]
    console = Console(width=80, record=True)
    console.print(rich_table("t", cols, rows))
    text = console.export_text()
    _fits(text)
    assert "hidden" not in text and "".join(text.split()).count("x") >= 70


def test_write_rows_formats_and_nan(tmp_path) -> None:
    rows = [{"a": 1, "b": float("nan")}, {"a": 2, "b": np.float64(0.25)}]
    got = json.loads(write_rows(rows, tmp_path / "x.json", meta={"title": "t"}).read_text())
    assert got == {"meta": {"title": "t"}, "rows": [{"a": 1, "b": None}, {"a": 2, "b": 0.25}]}
    assert (write_rows(rows, tmp_path / "x.csv")).read_text().splitlines() == ["a,b", "1,", "2,0.25"]
    with pytest.raises(ValueError, match="json or csv"):
        write_rows(rows, tmp_path / "x.txt")
