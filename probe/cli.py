"""`probe` command line: a thin typer layer; every command is one call of the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli_errors import App

app = App(root=True, no_args_is_help=True, help="Capture, evaluate and compare multimodal models.")
data_app = App(no_args_is_help=True, help="Datasets: the synthetic bilingual benchmark.")
OUTSIDE_HELP = "read manifest images outside the manifest's folder (absolute, ../ or symlinked paths; refused by default)"
app.add_typer(data_app, name="data")


@app.command("capture")
def capture_cmd(
    model: str = typer.Argument(..., help="model folder or hub id"),
    manifest: Path = typer.Argument(..., help="JSONL manifest (image, prompt, answer, lang, labels)"),
    out: Path = typer.Option(..., "--out", "-o", help="TraceStore folder (resumed if it exists)"),
    spec: Optional[Path] = typer.Option(None, "--spec", help="CaptureSpec as JSON"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT LoRA adapter folder applied to the model"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip bad examples (recorded in the store) instead of stopping"),
    chunk: int = typer.Option(64, "--chunk", help="examples per zarr chunk (and per crash-safe commit)"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept a pickled LoRA adapter_model.bin (runs code if crafted)"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="from_pretrained device_map (e.g. auto) for a model larger than one device"),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help=OUTSIDE_HELP),
) -> None:
    """Record attention statistics, keys, residuals and projector outputs into a TraceStore.

    Under `torchrun --nproc-per-node N` (or `accelerate launch --multi_gpu --num_processes N`) each process
    captures its share; rank 0 merges them into --out.
    """
    from probe.capture import CaptureSpec, capture
    from probe.capture.distributed import world
    from probe.models.loading import check_lora_adapter, load_model

    capture_spec = CaptureSpec.from_file(spec) if spec else None
    loaded = model
    if adapter is not None:
        check_lora_adapter(adapter, allow_pickle=allow_pickle)
        if allow_pickle:
            loaded = load_model(model, lora_adapter=adapter, allow_pickle=True)
    store = capture(loaded, manifest, out, capture_spec, lora_adapter=adapter, skip_bad=skip_bad,
                    examples_per_chunk=chunk, device_map=device_map, allow_outside_paths=allow_outside_paths)
    if world().rank == 0:
        typer.echo(f"wrote {len(store.example_ids)} examples to {out}" + (f" ({len(store.skipped)} skipped)" if store.skipped else ""))


@app.command("info")
def info_cmd(
    store: Path = typer.Argument(..., help="TraceStore folder"),
    check: bool = typer.Option(False, "--check", help="also read every chunk file and name the first that does not decode"),
) -> None:
    """Print a store's schema, sizes and provenance."""
    from probe.store import TraceStore
    from probe.store.check import find_unreadable
    from probe.store.schema import InvalidStoreError

    typer.echo(TraceStore.open(store).summary())
    if check:
        damaged = find_unreadable(store)
        if damaged:
            raise InvalidStoreError(damaged)
        typer.echo("  check: every chunk file reads")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="model folder or hub id"),
    manifest: Path = typer.Argument(..., help="JSONL manifest with reference answers"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="store (or new zarr) to save the evaluation into, group 'eval'"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT LoRA adapter folder applied to the model"),
    batch_size: int = typer.Option(32, "--batch-size"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept a pickled LoRA adapter_model.bin (runs code if crafted)"),
    choices: Optional[Path] = typer.Option(
        None, "--choices", help="JSON {lang: {question_type: [answers]}}: candidate answers where examples have no labels.choices"),
    allow_outside_paths: bool = typer.Option(False, "--allow-outside-paths", help=OUTSIDE_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the table (every column, full precision) as JSON"),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="also write the table (every column, full precision) as CSV"),
    protocol: str = typer.Option("dependence", "--protocol", help="dependence (real / blank / mismatched images) or pope "
                                 "(yes/no object questions over labels.objects; random, popular, adversarial negatives)"),
    seed: int = typer.Option(0, "--seed", help="pope: the seed of the negative sampling"),
) -> None:
    """Behavioural visual dependence: accuracy with real / blank / mismatched images per language and question type.

    With --protocol pope: POPE accuracy, precision, recall, F1 and yes-ratio per negative set and language."""
    from rich.console import Console

    from probe.data.manifest import read_manifest
    from probe.eval.dependence import dependence_rows, evaluate_dependence, format_dependence_table, save_dependence
    from probe.eval.target import eval_output
    from probe.models import load_model

    if protocol not in ("dependence", "pope"):
        raise typer.BadParameter(f"--protocol must be dependence or pope, got {protocol!r}")
    with eval_output(out):  # a store being written is refused before any work; held until the result is saved
        examples = read_manifest(manifest, allow_outside_paths=allow_outside_paths)
        loaded = load_model(model, lora_adapter=adapter, allow_pickle=allow_pickle)
        if protocol == "pope":
            from probe.eval.pope import PopeConfig, evaluate_pope, format_pope_table, pope_rows

            pope = evaluate_pope(loaded, examples, PopeConfig(seed=seed, batch_size=batch_size))
            Console().print(format_pope_table(pope, title=f"POPE: {model}"))
            _write_table(pope_rows(pope), json_out, csv_out, {"title": f"POPE: {model}", "manifest": str(manifest), "seed": seed})
            if out is not None:
                save_dependence(pope, out, group="pope")
                typer.echo(f"saved to {out} (group 'pope')")
            return
        ds = evaluate_dependence(loaded, examples, batch_size=batch_size, choices_file=choices)
        if out is not None:
            save_dependence(ds, out)
    Console().print(format_dependence_table(ds, title=f"visual dependence: {model}"))
    _write_table(dependence_rows(ds), json_out, csv_out, {"title": f"visual dependence: {model}", "manifest": str(manifest)})
    if out is not None:
        typer.echo(f"saved to {out} (group 'eval')")


def _write_table(rows: list, json_out: Optional[Path], csv_out: Optional[Path], meta: dict) -> None:
    """Write a printed table's rows to --json / --csv when given."""
    from probe.tables import write_rows

    for path, fmt in ((json_out, "json"), (csv_out, "csv")):
        if path is not None:
            typer.echo(f"table written to {write_rows(rows, path, fmt=fmt, meta=meta)}")


@app.command("analyze")
def analyze_cmd(
    store: Path = typer.Argument(..., help="TraceStore folder"),
    out: Path = typer.Option(..., "--out", "-o", help="HTML report to write (a .json summary is written beside it)"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="a comparable store to report against"),
    intersect: bool = typer.Option(False, "--intersect", help="with --baseline: compare on what both stores share (listed at the top)"),
    save: bool = typer.Option(False, "--save", help="also write every result into the store as group analysis/<name>"),
) -> None:
    """Analyse one store: attention, sinks, key space, probes, MIR; an offline HTML report plus JSON."""
    from probe.report import report
    from probe.store import TraceStore

    _check_report_out(out)
    for path in (store, baseline):
        if path is not None:
            TraceStore.open(path)  # a non-store path fails here in one line, before any analysis
    report(store, out, out.with_suffix(".json"), baseline=baseline, intersect=intersect, save=save)
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


@app.command("compare")
def compare_cmd(
    before: Path = typer.Argument(..., help="store captured before (e.g. the base model)"),
    after: Path = typer.Argument(..., help="store captured after (fine-tuned, intervened, mitigated)"),
    out: Path = typer.Option(..., "--out", "-o", help="HTML report to write (a .json summary is written beside it)"),
    intersect: bool = typer.Option(False, "--intersect", help="compare on what both stores share instead of refusing (listed at the top)"),
    save: bool = typer.Option(False, "--save", help="also write every result into the AFTER store as group compare/<name> "
                              "(the dashboard's overview reads its verdict from there)"),
    manifests: list[Path] = typer.Option([], "--manifest", help="JSONL manifest holding the examples' images, for the "
                                         "report's example pictures (repeatable)"),
) -> None:
    """Before/after comparison: which candidate causes moved, by how much, with intervals."""
    from probe.analysis.saved import fingerprint
    from probe.report import compare
    from probe.store import TraceStore
    from probe.store.check import explain_read_error

    _check_report_out(out)
    # a non-store path fails here in one line, before any analysis; the analyses read these opened stores, so a
    # save's fingerprint records the examples they read, not what a capture still running added meanwhile
    stores = [TraceStore.open(path) for path in (before, after)]
    if save:
        for st in stores:
            fingerprint(st)  # a store being written is refused now, not after the analyses
    try:
        compare(*stores, out, out.with_suffix(".json"), intersect=intersect, save_to=stores[1] if save else None,
                manifests=manifests)
    except Exception as err:  # a damaged chunk shows deep in dask with no file name: find and name it
        raise explain_read_error(err, [before, after]) or err
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


def _check_report_out(out: Path) -> None:
    """--out is the HTML report; its JSON summary goes beside it, so --out must not itself end in .json."""
    if out.suffix.lower() == ".json":
        raise ValueError(f"--out {out}: the HTML report would be overwritten by the JSON summary written beside it; "
                         f"give the HTML file (e.g. --out {out.with_suffix('.html')}) and the JSON goes to {out}")


@app.command("diagnose")
def diagnose_cmd(
    before: Path = typer.Argument(..., help="model before (e.g. the base): folder or hub id"),
    after: Path = typer.Argument(..., help="model after (fine-tuned); same architecture as BEFORE"),
    manifest: Path = typer.Argument(..., help="JSONL manifest; its image-dependent questions with answers are used"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for diagnosis.json, diagnosis.html, the captures and report"),
    images: int = typer.Option(40, "--images", help="use the first N images of the manifest (file order)"),
    question_type: Optional[list[str]] = typer.Option(None, "--question-type", help="only these question types (repeat)"),
    share: float = typer.Option(0.5, "--share", help="share of lost visual dependence a single cause must restore"),
    analyses: bool = typer.Option(True, "--analyses/--no-analyses", help="also capture both and write the comparison report"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Why did AFTER stop using the image? Causal component swaps and residual patches, ranked; writes OUT/diagnosis.html."""
    from probe.diagnose import diagnose

    d = diagnose(before, after, manifest, out, images=images, question_types=question_type, share=share,
                 analyses=analyses, seed=seed)
    typer.echo(f"named cause: {d.named} - {d.reason}")
    for i, e in enumerate(d.ranked, 1):
        typer.echo(f"{i}. {e.target:<16} restores {e.restored:6.0%} [{e.low:.0%}, {e.high:.0%}]")
    typer.echo(f"wrote {out / 'diagnosis.html'} and {out / 'diagnosis.json'}")
    if d.dashboard:
        typer.echo(f"dashboard: {d.dashboard}")


@app.command("dashboard")
def dashboard_cmd(
    root: Path = typer.Argument(..., help="folder whose stores (and intervention results) the dashboard may open"),
    port: int = typer.Option(8501, "--port", help="port to serve on"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; the default serves this machine only"),
) -> None:
    """Serve the Streamlit dashboard over the stores under ROOT (needs `pip install -e '.[apps]'`)."""
    import importlib.util
    import sys

    from probe.child import run_child

    if importlib.util.find_spec("apps") is None or importlib.util.find_spec("streamlit") is None:
        raise typer.BadParameter("the dashboard needs the apps extra: pip install -e '.[apps]'")
    # probe never imports apps (import-linter contract): the dashboard runs as its own program; a signal that ends this
    # command is passed on to it, and this command ends only when the server has stopped
    raise typer.Exit(run_child([sys.executable, "-m", "apps", str(root), "--port", str(port), "--host", host]))


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="folder for PNGs and JSONL manifests"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate the synthetic bilingual (English/Korean) visual QA benchmark."""
    from probe.data.synth import generate

    for split, path in generate(out, seed=seed).items():
        typer.echo(f"{split}: {path}")


if __name__ == "__main__":
    app()
