"""`interventions` command line: a thin typer layer over the Python API."""

from __future__ import annotations

from pathlib import Path

import typer

from probe.cli_errors import App

# every command prints one line on an error (a full disk included), a traceback only with --debug / VISBLIND_DEBUG=1
app = App(root=True, no_args_is_help=True, help="Causal interventions and the experiment runner.")


@app.command("run")
def run_cmd(
    grid: Path = typer.Argument(..., help="grid YAML: model, optional donor, manifest, interventions, seeds"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (results.zarr + grid.json); resumed if it exists"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run (or resume) a grid of interventions; one row per example and condition in OUT/results.zarr."""
    from interventions.runner import GridConfig, run_grid, summarise

    ds = run_grid(GridConfig.from_yaml(grid), out, progress=not quiet)
    table = summarise(ds)["visual_dependence"].to_pandas()
    typer.echo(f"wrote {ds.sizes['condition']} conditions x {ds.sizes['example']} examples to {out / 'results.zarr'}")
    typer.echo("visual dependence (image-dependent questions):\n" + table.round(3).to_string())
