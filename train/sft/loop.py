"""The SFT loop: AdamW over adapter-built batches, with checkpoints, a loss log and resume."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from probe.data.example import Example
from probe.models.base import ModelAdapter
from probe.models.loading import save_processor
from probe.progress import progress_bar
from train.sft.config import SFTConfig
from train.sft.freeze import apply_freeze, lora_target_modules
from train.sft.state import has_state, load_state, restore_trainable, save_state, save_trainable

CHECKPOINTS = "checkpoints"
LEGACY_STATE = "trainer_state.pt"  # pickled: never loaded (unpickling a crafted file runs code)


@dataclass
class SFTResult:
    """Where the final model went and how training went."""

    out_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    resumed_from: int


class StopTraining(Exception):
    """Raised by a callback to stop after the current step (used to simulate an interruption)."""


def total_steps(n_examples: int, config: SFTConfig) -> int:
    """Number of optimizer steps for a dataset of `n_examples`."""
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * n_examples / config.batch_size))


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: a fresh seeded permutation per epoch (resume-safe)."""
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    if n < batch_size:
        return perm
    return perm[k * batch_size : (k + 1) * batch_size]


def _device(config: SFTConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit()]
    legacy = [p for p in steps if (p / LEGACY_STATE).is_file() and not has_state(p)]
    if legacy:
        raise ValueError(f"checkpoint {legacy[0]} holds a pickled trainer_state.pt, which is never loaded "
                         "(it could run code); rerun with --no-resume or delete that folder")
    found = [p for p in steps if has_state(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_model(model: torch.nn.Module, processor: object, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if processor is not None and hasattr(processor, "save_pretrained"):
        save_processor(processor, path)


def _save_checkpoint(out_dir: Path, step: int, model, processor, opt, sched, config: SFTConfig) -> None:
    path = out_dir / CHECKPOINTS / f"step-{step}"
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_model(model, processor, tmp)
    save_trainable(_trainable(model), tmp)
    save_state({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "config": asdict(config)}, tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)  # a checkpoint is visible only once complete
    for old in _checkpoints(out_dir)[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, model, opt, sched) -> int:
    restore_trainable(_trainable(model), path)
    state = load_state(path)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["step"])


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

    The final model is `out_dir/final` (save_pretrained; a PEFT adapter folder when LoRA).
    With `resume`, training continues from the newest complete checkpoint in out_dir.
    """
    if not examples:
        raise ValueError("sft: no training examples")
    missing = [ex.id for ex in examples if ex.answer is None]
    if missing:
        raise ValueError(f"sft: example {missing[0]!r} has no answer ({len(missing)} without answers)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = _device(config)
    model = prepare_model(adapter, config).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"sft: nothing to train (freeze={config.freeze})")
    opt = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    warm = config.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    n_steps = total_steps(len(examples), config)
    start = 0
    ckpts = _checkpoints(out) if resume else []
    if ckpts:
        start = _load_checkpoint(ckpts[-1], model, opt, sched)
    log_path = out / "loss.jsonl"
    if start == 0:
        log_path.unlink(missing_ok=True)
    else:
        _truncate_log(log_path, start)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = progress_bar(range(start, n_steps), initial=start, total=n_steps, desc="sft", disable=not progress)
    with log_path.open("a", encoding="utf-8") as log:
        for step in bar:
            batch = [examples[i] for i in batch_indices(len(examples), step, config.batch_size, config.seed)]
            inputs = adapter.build_inputs(batch, padding_side=config.padding_side).to(device)
            loss = model(**inputs.inputs, labels=inputs.labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            value = float(loss.detach())
            losses.append(value)
            done = step + 1
            if done % config.log_every == 0 or done == n_steps:
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)  # shown at the bar's own interval (30 s in logs)
                log.write(json.dumps({"step": done, "loss": value, "lr": sched.get_last_lr()[0],
                                      "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
                log.flush()
            if done % config.checkpoint_every == 0 and done < n_steps:
                _save_checkpoint(out, done, model, adapter.processor, opt, sched, config)
            if callback is not None:
                callback(done, value)
            if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds:
                n_steps = done
                break
    model.eval()
    _save_model(model, adapter.processor, out / "final")
    (out / "final" / "sft_config.json").write_text(json.dumps(asdict(config), indent=1))
    return SFTResult(out, n_steps, losses, time.perf_counter() - t0, start)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))
