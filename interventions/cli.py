"""`interventions` command line: a thin typer layer over the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from probe.cli_errors import App

if TYPE_CHECKING:
    import xarray as xr

# every command prints one line on an error (a full disk included), a traceback only with --debug / VISBLIND_DEBUG=1
app = App(root=True, no_args_is_help=True, help="Causal interventions and the experiment runner.")


@app.command("run")
def run_cmd(
    grid: Path = typer.Argument(..., help="grid YAML: model, optional donor, manifest, interventions, seeds"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (results.zarr + grid.json); resumed if it exists"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    json_out: Path = typer.Option(None, "--json", help="also write the summary table (full precision) as JSON"),
    csv_out: Path = typer.Option(None, "--csv", help="also write the summary table (full precision) as CSV"),
) -> None:
    """Run (or resume) a grid of interventions; one row per example and condition in OUT/results.zarr."""
    from interventions.runner import GridConfig, run_grid, summarise

    ds = run_grid(GridConfig.from_yaml(grid), out, progress=not quiet)
    from rich.console import Console

    from probe.tables import rich_table, write_rows

    typer.echo(f"wrote {ds.sizes['condition']} conditions x {ds.sizes['example']} examples to {out / 'results.zarr'}")
    rows, columns, cells = summary_rows(summarise(ds))
    Console().print(rich_table("visual dependence (image-dependent questions) and accuracy, per condition", columns, rows,
                               "\\[low–high]: 95% bootstrap interval over groups (an image asked twice is one unit)", cells))
    for path, fmt in ((json_out, "json"), (csv_out, "csv")):
        if path is not None:
            typer.echo(f"table written to {write_rows(rows, path, fmt=fmt, meta={'grid': str(grid)})}")


def summary_rows(summary: "xr.Dataset") -> tuple[list[dict], list, list[dict]]:
    """(rows with every statistic, the columns, the printed cells) of `summarise`'s dataset: one row per condition x level."""
    from probe.tables import Column

    by = [d for d in summary.dims if d != "condition"][0]
    stats = ("visual_dependence", "accuracy_image", "accuracy_text")
    headers = {"visual_dependence": "vis.dep", "accuracy_image": "acc. image", "accuracy_text": "acc. text"}
    columns = [Column("condition", justify="left"), Column(by, by.removeprefix("example_"), justify="left")]
    columns += [Column(f"{k}{s}", headers[k] if not s else "", terminal=not s) for k in stats for s in ("", "_low", "_high")]
    rows, cells = [], []
    for condition in summary["condition"].values:
        for level in summary[by].values:
            x = summary.sel({"condition": condition, by: level})
            row = {"condition": str(condition), by: str(level)}
            row |= {f"{k}{s}": float(x[f"{k}{s}"]) for k in stats for s in ("", "_low", "_high")}
            rows.append(row)
            cells.append({"condition": str(condition), by: str(level)} | {
                k: "–" if row[k] != row[k] else f"{row[k]:.3f}\n[{row[k + '_low']:.2f}–{row[k + '_high']:.2f}]" for k in stats})
    return rows, columns, cells
