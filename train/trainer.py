"""The one training loop of `train`: SFT and every mitigation recipe run it with their own loss (an `Objective`).

It owns what a run must get right once: the output folder's one-writer lock, data parallelism through
accelerate (shards of each batch, gradients summed, rank 0 writes), the checkpoint format (trainable tensors,
optimizer, scheduler, the objective's own state and every process's random-number state, as safetensors +
JSON: never a pickle), resume (newest complete checkpoint; refused in one line when the run's settings
differ from the checkpoint's), the step log (a line cut by a kill is dropped on resume) and the final model
(written aside, then renamed into place).

A resumed run equals an uninterrupted one bit for bit, dropout included: the data order is a function of the
step, and the torch (CPU and CUDA), Python and NumPy generators are restored from the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from probe.data.example import Example
from probe.progress import progress_bar
from probe.store.lock import StoreLockedError, acquire, release
from train.sft.state import has_state, load_state, restore_trainable, save_state, save_trainable

CHECKPOINTS = "checkpoints"
FINAL = "final"
LEGACY_STATE = "trainer_state.pt"  # pickled: never loaded (unpickling a crafted file runs code)
RNG_STEM = "rng_state"


class StopTraining(Exception):
    """Raised by a callback to stop after the current step (used to simulate an interruption)."""


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: a fresh seeded permutation per epoch (resume-safe)."""
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    if n < batch_size:
        return perm
    return perm[k * batch_size : (k + 1) * batch_size]


class Parallel:
    """Data parallelism through accelerate's process state: shards of each batch, gradients summed, rank 0 writes.

    Gradients are all-reduced by hand rather than through DDP because a VDC step runs several forwards
    (image, text only, anchors) before one backward.
    """

    def __init__(self, device: str) -> None:
        from accelerate import PartialState

        self.state = PartialState(cpu=device == "cpu")
        self.world, self.rank = self.state.num_processes, self.state.process_index
        self.main = self.state.is_main_process
        self.device = self.state.device if device in ("auto", "cpu") or self.world > 1 else torch.device(device)

    def shard(self, batch: list[Example]) -> list[Example]:
        """This process's rows of a batch."""
        if len(batch) < self.world:
            raise ValueError(f"batch of {len(batch)} cannot be split over {self.world} processes")
        return batch[self.rank :: self.world]

    def sum(self, value: float) -> float:
        """A number summed over processes."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def reduce_grads(self, params: list[nn.Parameter]) -> None:
        """Sum every parameter's gradient over processes."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


class Objective(ABC):
    """What a run trains and how its loss is computed; the loop does the rest."""

    #: the step log's file name in the run folder
    log_name: ClassVar[str] = "loss.jsonl"
    #: log terms every process computes alike (not summed over processes)
    shared_terms: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def trainable(self) -> dict[str, nn.Parameter]:
        """Qualified name -> trainable parameter (what a checkpoint saves), in optimizer order."""

    @abstractmethod
    def batch(self, step: int) -> list[Example]:
        """The whole batch of optimizer step `step` (the loop takes this process's shard)."""

    @abstractmethod
    def loss(self, batch: list[Example], par: Parallel) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's share of the loss (gradients summed over processes give the batch's) and its log terms,
        `loss` among them."""

    @abstractmethod
    def write_final(self, folder: Path) -> None:
        """Write the trained model into `folder` (a fresh folder, renamed to `final/` once complete)."""

    def extra_state(self) -> dict[str, Any]:
        """State of the objective's own a checkpoint keeps (tensors, numbers)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore `extra_state` from a checkpoint's state."""


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to log and checkpoint."""

    steps: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int = 1
    grad_clip: float | None = 1.0
    max_seconds: float | None = None
    cumulative_seconds: bool = False  # log seconds since start (SFT) instead of the step's own (mitigation)
    desc: str = "train"


@dataclass
class LoopResult:
    """How the loop went on this process."""

    steps: int
    losses: list[float]
    seconds: float
    step_seconds: list[float]
    resumed_from: int


def total_steps(n_examples: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps for `epochs` over `n_examples` (or `max_steps` when given)."""
    if max_steps is not None:
        return max_steps
    return max(1, math.ceil(epochs * n_examples / batch_size))


# --- the output folder's lock -----------------------------------------------------------------
@contextmanager
def writer_lock(folder: str | Path, command: str, par: Parallel | None = None) -> Iterator[None]:
    """Hold the one-writer lock of a training output folder (created if missing); refused in one line.

    The lock is the store's flock (probe.store.lock): the operating system drops it when the holder dies,
    so a killed run never blocks the next one. Under data parallelism rank 0 holds it for the job.
    """
    folder = Path(folder)
    if par is not None and not par.main:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire(folder, command)
    except StoreLockedError:
        raise StoreLockedError(f"{folder} is being written by another process ({command}); wait for it to finish "
                               "or use another --out") from None
    try:
        yield
    finally:
        release(lock)


# --- checkpoints ------------------------------------------------------------------------------
def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first; a pickled legacy one is refused in one line."""
    root = folder / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit()]
    legacy = [p for p in steps if (p / LEGACY_STATE).is_file() and not has_state(p)]
    if legacy:
        raise ValueError(f"checkpoint {legacy[0]} holds a pickled trainer_state.pt, which is never loaded "
                         "(it could run code); rerun with --no-resume or delete that folder")
    return sorted((p for p in steps if has_state(p)), key=lambda p: int(p.name[5:]))


def rng_state() -> dict[str, Any]:
    """Every random-number generator a step may draw from (dropout, augmentation): torch CPU/CUDA, Python, NumPy."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _save_checkpoint(folder: Path, step: int, objective: Objective, opt: torch.optim.Optimizer,
                     sched: Any, fingerprint: dict[str, Any], par: Parallel, keep: int) -> None:
    path = folder / CHECKPOINTS / f"step-{step}"
    tmp = path.with_name(path.name + ".tmp")
    if par.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    par.barrier()
    save_state(rng_state(), tmp, stem=f"{RNG_STEM}.{par.rank}")  # every process its own generators
    par.barrier()
    if par.main:
        save_trainable(objective.trainable(), tmp)
        save_state({"step": step, "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "config": fingerprint, **objective.extra_state()}, tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)  # a checkpoint is visible only once complete
        for old in checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    par.barrier()


def _refuse_changes(path: Path, saved: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """One line when this run's settings differ from those the checkpoint was trained with."""
    if not saved:
        return  # a checkpoint from before settings were recorded
    diff = [k for k in now if k in saved and _plain(saved[k]) != _plain(now[k])]
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more: {', '.join(diff[1:])})" if len(diff) > 1 else ""
        raise ValueError(f"{path} was trained with {k}={_plain(saved[k])!r}, this run asks {k}={_plain(now[k])!r}{more}; "
                         "resume with the same settings, or start over with --no-resume (or another --out)")


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _load_checkpoint(path: Path, objective: Objective, opt: torch.optim.Optimizer, sched: Any,
                     fingerprint: dict[str, Any], par: Parallel) -> int:
    state = load_state(path)
    _refuse_changes(path, state.get("config"), fingerprint)
    restore_trainable(objective.trainable(), path)
    opt.load_state_dict(state["optimizer"])
    if sched is not None and state.get("scheduler") is not None:
        sched.load_state_dict(state["scheduler"])
    objective.load_extra_state(state)
    for stem in (f"{RNG_STEM}.{par.rank}", f"{RNG_STEM}.0"):  # another process count: rank 0's generators
        if has_state(path, stem=stem):
            set_rng_state(load_state(path, stem=stem))
            break
    return int(state["step"])


def truncate_log(path: Path, step: int) -> None:
    """Keep log rows up to `step` (rows after the checkpoint resumed from are redone); a line cut by a kill is dropped."""
    if step == 0:
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a run killed mid-write
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def write_final(folder: Path, objective: Objective, par: Parallel) -> Path:
    """The trained model in `folder/final`, written aside and renamed into place (rank 0)."""
    final, tmp = folder / FINAL, folder / (FINAL + ".tmp")
    if par.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        objective.write_final(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # visible only once complete
    par.barrier()
    return final


# --- the loop ---------------------------------------------------------------------------------
def run_loop(folder: str | Path, objective: Objective, opt: torch.optim.Optimizer, settings: LoopSettings, *,
             sched: Any = None, fingerprint: dict[str, Any], par: Parallel, resume: bool = True,
             callback: Callable[[int, dict], None] | None = None, progress: bool = True) -> LoopResult:
    """Train `objective` for `settings.steps` optimizer steps in `folder` (resuming from its newest checkpoint).

    `fingerprint` is what a checkpoint must have been trained with to be resumed (the settings that change
    the result). `callback(step, row)` runs after every step with the step's log row (raise StopTraining to
    simulate a kill). The caller holds the folder's lock (`writer_lock`) and writes the final model.
    """
    folder = Path(folder)
    params = list(objective.trainable().values())
    start = 0
    found = checkpoints(folder) if resume else []
    if found:
        start = _load_checkpoint(found[-1], objective, opt, sched, fingerprint, par)
    log_path = folder / objective.log_name
    if par.main:
        truncate_log(log_path, start)
    par.barrier()
    n_steps = settings.steps
    losses: list[float] = []
    times: list[float] = []
    t0 = time.perf_counter()
    bar = progress_bar(range(start, n_steps), initial=start, total=n_steps, desc=settings.desc,
                       disable=not (progress and par.main))
    with open(log_path if par.main else os.devnull, "a", encoding="utf-8") as log:
        for step in bar:
            ts = time.perf_counter()
            loss, terms = objective.loss(par.shard(objective.batch(step)), par)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            par.reduce_grads(params)
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            times.append(time.perf_counter() - ts)
            done = step + 1
            row: dict[str, Any] = {"step": done, **{k: v if k in objective.shared_terms else par.sum(v)
                                                    for k, v in terms.items()}}
            if sched is not None:
                row["lr"] = sched.get_last_lr()[0]
            row["seconds"] = round(time.perf_counter() - t0, 3) if settings.cumulative_seconds else round(times[-1], 4)
            losses.append(row["loss"])
            if done % settings.log_every == 0 or done == n_steps:
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)  # shown at the bar's own interval in logs
            if done % settings.checkpoint_every == 0 and done < n_steps:
                _save_checkpoint(folder, done, objective, opt, sched, fingerprint, par, settings.keep_checkpoints)
            if callback is not None:
                callback(done, row)
            if settings.max_seconds is not None and time.perf_counter() - t0 > settings.max_seconds:
                n_steps = done
                break
    return LoopResult(n_steps, losses, time.perf_counter() - t0, times, start)


def data_fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of the training examples' ids, prompts and answers (a changed data set refuses resume)."""
    import hashlib

    h = hashlib.sha1()
    for ex in examples:
        h.update(json.dumps([ex.id, ex.prompt, ex.answer, str(ex.image) if not hasattr(ex.image, "tobytes") else
                             hashlib.sha1(ex.image.tobytes()).hexdigest()], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


__all__ = ["LoopResult", "LoopSettings", "Objective", "Parallel", "StopTraining", "batch_indices", "checkpoints",
           "data_fingerprint", "rng_state", "run_loop", "set_rng_state", "total_steps", "truncate_log", "write_final",
           "writer_lock"]
