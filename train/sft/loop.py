"""SFT: the task loss (answer tokens' cross-entropy) on the one training loop of `train.trainer`."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from probe.data.example import Example
from probe.models.base import ModelAdapter
from probe.models.loading import save_processor
from train.sft.config import SFTConfig
from train.sft.freeze import apply_freeze, lora_target_modules
from train.trainer import (
    LoopSettings, Objective, Parallel, StopTraining, batch_indices, data_fingerprint, run_loop, write_final, writer_lock,
)
from train.trainer import total_steps as _total_steps

CHECKPOINTS = "checkpoints"
# what a checkpoint may be resumed with although it differs: how long, how often, where, how fast
RUN_ONLY = frozenset({"max_steps", "epochs", "checkpoint_every", "keep_checkpoints", "log_every", "device", "threads",
                      "max_seconds"})


@dataclass
class SFTResult:
    """Where the final model went and how training went."""

    out_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    resumed_from: int


def total_steps(n_examples: int, config: SFTConfig) -> int:
    """Number of optimizer steps for a dataset of `n_examples`."""
    return _total_steps(n_examples, config.batch_size, config.epochs, config.max_steps)


def prepare_model(adapter: ModelAdapter, config: SFTConfig) -> torch.nn.Module:
    """Freeze components and wrap in LoRA (peft) when lora_r > 0; returns the module to train."""
    for p in adapter.model.parameters():
        p.requires_grad_(True)
    apply_freeze(adapter, config.freeze)
    if config.lora_r == 0:
        return adapter.model
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(adapter, config.freeze)
    if not targets:
        raise ValueError("LoRA: no decoder Linear layers left to adapt (is the decoder frozen?)")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets)
    return get_peft_model(adapter.model, lora)


class SFTObjective(Objective):
    """The answer tokens' mean cross-entropy over the whole batch (each process's share weighted by its tokens)."""

    log_name = "loss.jsonl"

    def __init__(self, adapter: ModelAdapter, model: torch.nn.Module, examples: Sequence[Example], config: SFTConfig,
                 device: torch.device) -> None:
        self.adapter, self.model, self.examples, self.config, self.device = adapter, model, examples, config, device

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def batch(self, step: int) -> list[Example]:
        cfg = self.config
        return [self.examples[i] for i in batch_indices(len(self.examples), step, cfg.batch_size, cfg.seed)]

    def loss(self, batch: list[Example], par: Parallel) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = self.adapter.build_inputs(batch, padding_side=self.config.padding_side).to(self.device)
        loss = self.model(**inputs.inputs, labels=inputs.labels).loss
        if par.world > 1:  # a mean over this shard's answer tokens -> its share of the batch's mean
            local = int((inputs.labels[:, 1:] != -100).sum())
            loss = loss * (local / par.sum(local))
        return loss, {"loss": float(loss.detach())}

    def write_final(self, folder: Path) -> None:
        self.model.eval()
        self.model.save_pretrained(folder, safe_serialization=True)
        if self.adapter.processor is not None and hasattr(self.adapter.processor, "save_pretrained"):
            save_processor(self.adapter.processor, folder)
        (folder / "sft_config.json").write_text(json.dumps(asdict(self.config), indent=1))


def sft(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    config: SFTConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> SFTResult:
    """Fine-tune `adapter.model` on `examples`; writes checkpoints, loss.jsonl and the final model to out_dir.

    The final model is `out_dir/final` (save_pretrained; a PEFT adapter folder when LoRA), written aside and
    renamed into place. With `resume`, training continues from the newest complete checkpoint in out_dir,
    which must have been trained with the same settings and examples (else one-line ValueError). One process
    writes out_dir at a time (a second is refused in one line); under torchrun / accelerate each process
    trains on its shard of every batch.
    """
    if not examples:
        raise ValueError("sft: no training examples")
    missing = [ex.id for ex in examples if ex.answer is None]
    if missing:
        raise ValueError(f"sft: example {missing[0]!r} has no answer ({len(missing)} without answers)")
    out = Path(out_dir)
    par = Parallel(config.device)
    with writer_lock(out, "train sft", par):
        par.barrier()
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        model = prepare_model(adapter, config).to(par.device)
        model.train()
        objective = SFTObjective(adapter, model, examples, config, par.device)
        params = list(objective.trainable().values())
        if not params:
            raise ValueError(f"sft: nothing to train (freeze={config.freeze})")
        opt = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        warm = config.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        settings = LoopSettings(total_steps(len(examples), config), config.checkpoint_every, config.keep_checkpoints,
                                log_every=config.log_every, grad_clip=config.grad_clip, max_seconds=config.max_seconds,
                                cumulative_seconds=True, desc="sft")
        fingerprint = {**{k: v for k, v in asdict(config).items() if k not in RUN_ONLY},
                       "examples": data_fingerprint(examples)}
        done = run_loop(out, objective, opt, settings, sched=sched, fingerprint=fingerprint, par=par, resume=resume,
                        callback=(lambda step, row: callback(step, row["loss"])) if callback is not None else None,
                        progress=progress)
        model.eval()
        write_final(out, objective, par)
    return SFTResult(out, done.steps, done.losses, done.seconds, done.resumed_from)


__all__ = ["SFTObjective", "SFTResult", "StopTraining", "batch_indices", "prepare_model", "sft", "total_steps"]
