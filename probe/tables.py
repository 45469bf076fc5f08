"""Tables the command lines print: readable at 80 columns in a terminal, and the same rows written as JSON or CSV.

A table is a list of rows (dicts) and its columns; the terminal shows the columns marked `terminal`, wrapping
long cells rather than cutting them (no ellipsis), while JSON/CSV keep every column with full-precision values.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table


@dataclass(frozen=True)
class Column:
    """One column: its key in the rows, its terminal header, alignment, and whether the terminal shows it."""

    key: str
    header: str = ""
    justify: str = "right"
    terminal: bool = True


def rich_table(title: str, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], caption: str = "",
               cells: Sequence[Mapping[str, str]] | None = None) -> Table:
    """A compact rich Table of the terminal columns: no vertical rules, cells wrap (fold) instead of ending in '…'.

    `cells`: the printed text of each row (default: str of the row's values).
    """
    # columns two spaces apart (a blank rule and one pad), no outer edge: the most columns that fit in 80
    table = Table(title=title, caption=caption or None, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False, show_edge=False,
                  caption_justify="left", title_justify="left")
    shown = [c for c in columns if c.terminal]
    for c in shown:
        table.add_column(c.header or c.key, justify=c.justify, overflow="fold")
    for i, row in enumerate(rows):
        text = cells[i] if cells is not None else {k: _text(v) for k, v in row.items()}
        table.add_row(*(str(text.get(c.key, "")) for c in shown))
    return table


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path, *, fmt: str | None = None,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write `rows` to `path` as JSON ({"meta": .., "rows": [..]}) or CSV (header + one line per row).

    The format is `fmt` ('json' / 'csv'), else the file's suffix. NaN is written as null / an empty cell.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("json", "csv"):
        raise ValueError(f"{path}: table format must be json or csv (from --json/--csv or the suffix), got {fmt!r}")
    plain = [{k: _plain(v) for k, v in row.items()} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps({"meta": dict(meta or {}), "rows": plain}, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        return path
    keys = list(dict.fromkeys(k for row in plain for k in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in keys} for row in plain)
    return path
