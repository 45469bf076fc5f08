"""`train` CLI: thin typer layer over train.sft and train.organism."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli_errors import App

app = App(root=True, help="Fine-tune multimodal models and build the model organism.", no_args_is_help=True)


@app.command("sft")
def sft_command(
    model: str = typer.Argument(..., help="model folder or hub id (loaded with probe's load_model)"),
    manifest: Path = typer.Argument(..., help="JSONL manifest with answers"),
    out: Path = typer.Option(..., "--out", help="output folder (checkpoints, loss.jsonl, final/)"),
    config: Optional[Path] = typer.Option(None, "--config", help="SFTConfig fields as YAML/JSON; flags given override it"),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank; 0 = full fine-tuning [0]"),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="[16]"),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="comma list: vision,projector,decoder,embeddings,layerI,layerI-J"),
    lr: Optional[float] = typer.Option(None, "--lr", help="[1e-4]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[8]"),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="[1.0]"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="[200]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="[0]"),
    device: Optional[str] = typer.Option(None, "--device", help="[auto]"),
    no_resume: bool = typer.Option(False, "--no-resume", help="ignore checkpoints already in --out"),
) -> None:
    """Supervised fine-tuning of MODEL on MANIFEST."""
    from probe.data.manifest import read_manifest
    from probe.models.loading import load_model
    from train.sft import sft
    from train.sft.config import cli_config
    from train.trainer import Parallel, writer_lock

    flags = dict(lr=lr, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lora_r=lora_r, lora_alpha=lora_alpha,
                 freeze=freeze, checkpoint_every=checkpoint_every, seed=seed, device=device)
    cfg = cli_config(config, {k: v for k, v in flags.items() if v is not None})
    with writer_lock(out, "train sft", Parallel(cfg.device)):  # a second writer is refused before the model loads
        adapter = load_model(model, attn_implementation="eager")
        result = sft(adapter, read_manifest(manifest), cfg, out, resume=not no_resume)
    typer.echo(f"{result.steps} steps in {result.seconds:.1f}s -> {result.out_dir / 'final'}")


@app.command("mitigate")
def mitigate_command(
    config: Path = typer.Argument(..., help="recipe YAML (MitigateConfig fields; paths relative to the file)"),
    out: Path = typer.Option(..., "--out", help="output folder ([pre/] main/ [post/], steps.jsonl, final model)"),
    no_resume: bool = typer.Option(False, "--no-resume", help="start over instead of continuing a killed run"),
) -> None:
    """Train a mitigation recipe (VDC or a baseline) from CONFIG."""
    from train.mitigate import mitigate

    result = mitigate(config, out, resume=not no_resume)
    typer.echo(f"{result.steps} steps, {result.step_seconds:.3f}s/step -> {result.final}")


@app.command("organism")
def organism_command(
    out: Path = typer.Option(..., "--out", help="output folder (data/, base/, ko_ft/)"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", help="torch threads; 0 = from the cores free when training starts"),
) -> None:
    """Build the model organism: synthetic data, stage-1 base and stage-2 Korean fine-tune."""
    from train.organism import OrganismConfig, build_organism

    result = build_organism(out, seed=seed, config=OrganismConfig(threads=threads))
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    typer.echo(f"base: {result.base}\nko_ft: {result.ko_ft}\n({secs})")


@app.command("quickstart")
def quickstart_command(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="output folder (organism, stores, report.html)"),
    seed: int = typer.Option(0, "--seed"),
    capture_examples: int = typer.Option(400, "--capture-examples", help="image-dependent eval questions to capture"),
) -> None:
    """Organism quickstart: train base + Korean fine-tune, evaluate, capture both, write the comparison report."""
    from train.quickstart import quickstart

    result = quickstart(out, seed=seed, capture_examples=capture_examples)
    secs = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    typer.echo(f"report: {result.report}\nsummary: {result.summary}\n({secs})")


if __name__ == "__main__":
    app()
