"""`train` CLI: thin typer layer over train.sft and train.organism."""

from __future__ import annotations

from pathlib import Path

import typer

from probe.cli_errors import App

app = App(root=True, help="Fine-tune multimodal models and build the model organism.", no_args_is_help=True)


@app.command("sft")
def sft_command(
    model: str = typer.Argument(..., help="model folder or hub id (loaded with probe's load_model)"),
    manifest: Path = typer.Argument(..., help="JSONL manifest with answers"),
    out: Path = typer.Option(..., "--out", help="output folder (checkpoints, loss.jsonl, final/)"),
    lora_r: int = typer.Option(0, "--lora-r", help="LoRA rank; 0 = full fine-tuning"),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    freeze: str = typer.Option("", "--freeze", help="comma list: vision,projector,decoder,embeddings,layerI,layerI-J"),
    lr: float = typer.Option(1e-4, "--lr"),
    batch_size: int = typer.Option(8, "--batch-size"),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    no_resume: bool = typer.Option(False, "--no-resume", help="ignore checkpoints already in --out"),
) -> None:
    """Supervised fine-tuning of MODEL on MANIFEST."""
    from probe.data.manifest import read_manifest
    from probe.models.loading import load_model
    from train.sft import SFTConfig, sft

    cfg = SFTConfig(lr=lr, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lora_r=lora_r,
                    lora_alpha=lora_alpha, freeze=freeze, checkpoint_every=checkpoint_every, seed=seed,
                    device=device)
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
