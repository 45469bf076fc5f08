"""`probe` command line: a thin typer layer; every command is one call of the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Capture, evaluate and compare multimodal models.")
data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Datasets: the synthetic bilingual benchmark.")
app.add_typer(data_app, name="data")


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command("capture")
def capture_cmd(
    model: str = typer.Argument(..., help="model folder or hub id"),
    manifest: Path = typer.Argument(..., help="JSONL manifest (image, prompt, answer, lang, labels)"),
    out: Path = typer.Option(..., "--out", "-o", help="TraceStore folder (resumed if it exists)"),
    spec: Optional[Path] = typer.Option(None, "--spec", help="CaptureSpec as JSON"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT LoRA adapter folder applied to the model"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip bad examples (recorded in the store) instead of stopping"),
    chunk: int = typer.Option(64, "--chunk", help="examples per zarr chunk (and per crash-safe commit)"),
) -> None:
    """Record attention statistics, keys, residuals and projector outputs into a TraceStore."""
    from probe.capture import CaptureSpec, capture
    from probe.models.base import BadExampleError

    try:
        store = capture(model, manifest, out, CaptureSpec.from_file(spec) if spec else None,
                        lora_adapter=adapter, skip_bad=skip_bad, examples_per_chunk=chunk)
    except (BadExampleError, ValueError, FileNotFoundError, KeyError) as err:
        _fail(err)
    typer.echo(f"wrote {len(store.example_ids)} examples to {out}" + (f" ({len(store.skipped)} skipped)" if store.skipped else ""))


@app.command("info")
def info_cmd(store: Path = typer.Argument(..., help="TraceStore folder")) -> None:
    """Print a store's schema, sizes and provenance."""
    from probe.store import TraceStore

    try:
        typer.echo(TraceStore.open(store).summary())
    except (ValueError, FileNotFoundError) as err:
        _fail(err)


if __name__ == "__main__":
    app()
