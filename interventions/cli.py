"""`interventions` command line: a thin typer layer over the Python API."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Causal interventions and the experiment runner.")


@app.callback()
def main() -> None:
    """Causal interventions on multimodal models."""


@app.command("run")
def run_cmd(
    grid: Path = typer.Argument(..., help="grid YAML: model, optional donor, manifest, interventions, seeds"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (results.zarr + grid.json); resumed if it exists"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run (or resume) a grid of interventions; one row per example and condition in OUT/results.zarr."""
    from interventions.runner import GridConfig, run_grid, summarise

    try:
        config = GridConfig.from_yaml(grid)
        ds = run_grid(config, out, progress=not quiet)
    except (ValueError, KeyError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    table = summarise(ds)["visual_dependence"].to_pandas()
    typer.echo(f"wrote {ds.sizes['condition']} conditions x {ds.sizes['example']} examples to {out / 'results.zarr'}")
    typer.echo("visual dependence (image-dependent questions):\n" + table.round(3).to_string())
