"""`mitigate`: train one recipe (optional projector stage, main stage, optional post-hoc projector stage), resumable."""

from __future__ import annotations

import copy
import json
import shutil
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from probe.data.example import Example
from probe.data.manifest import read_manifest
from probe.models.base import ModelAdapter, ModelInputs
from probe.models.loading import load_model, save_processor
from probe.segments import Segment
from train.mitigate.anchors import Anchors, anchor_examples
from train.mitigate.config import CONFIG_FILE, MitigateConfig, ProjectorStage, config_dict, load_config, save_config
from train.mitigate.lora import layer_visual_share, lora_plan, modality_ranks, wrap_lora
from train.mitigate.losses import (
    AlignHead, align_loss_rows, align_weight, answer_kl, answer_logprob, contrast_margin, rbf_mmd2, wasserstein,
)
from train.mitigate.plot import write_steps_figure
from train.sft.freeze import apply_freeze
from train.trainer import (
    LoopSettings, Objective, Parallel, StopTraining, batch_indices, checkpoints, run_loop, write_final, writer_lock,
)

LOG = "steps.jsonl"
HEAD = "align_head."
# recipe fields a checkpoint may be resumed with although they differ (where and how fast, how often saved)
RUN_ONLY = frozenset({"checkpoint_every", "keep_checkpoints", "threads", "device"})


@dataclass
class MitigateResult:
    """Where the recipe's final model is, and how its main stage went."""

    out_dir: Path
    final: Path
    steps: int
    seconds: float
    step_seconds: float
    resumed_from: int


def mitigate(
    config: MitigateConfig | str | Path, out_dir: str | Path, *, resume: bool = True, progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> MitigateResult:
    """Train a recipe into out_dir: [pre/] main/ [post/], each with steps.jsonl, checkpoints and final/ (a merged model).

    main/steps.html plots the main stage's loss terms and drift per step (train.mitigate.plot).

    The recipe is saved as out_dir/mitigate.yaml and beside every final model. With `resume`, a finished stage
    is kept and an unfinished one continues from its newest checkpoint; a different recipe in out_dir raises.
    `callback(step, log_row)` runs after every main-stage step (raise StopTraining to simulate a kill).
    """
    cfg = load_config(config) if isinstance(config, (str, Path)) else config
    out = Path(out_dir)
    par = Parallel(cfg.device)
    with writer_lock(out, "train mitigate", par):
        return _mitigate(cfg, out, par, resume=resume, progress=progress, callback=callback)


def _mitigate(cfg: MitigateConfig, out: Path, par: Parallel, *, resume: bool, progress: bool,
              callback: Callable[[int, dict], None] | None) -> MitigateResult:
    par.barrier()
    saved = out / CONFIG_FILE
    if saved.is_file() and resume and config_dict(load_config(saved, resolve_paths=False)) != config_dict(cfg):
        raise ValueError(f"{out}: holds a different recipe ({saved}); use another --out or --no-resume")
    if par.main:
        if not resume:
            for sub in ("pre", "main", "post"):
                shutil.rmtree(out / sub, ignore_errors=True)
        save_config(cfg, saved)
    par.barrier()
    model = cfg.model
    if cfg.pre is not None:
        model = str(_run(_projector_config(cfg, cfg.pre), model, out / "pre", progress=progress).final)
    main = _run(cfg, model, out / "main", progress=progress, callback=callback)
    final = main.final
    if cfg.post is not None:
        final = _run(_projector_config(cfg, cfg.post), str(final), out / "post", progress=progress).final
    if par.main:
        save_config(cfg, final)
        write_steps_figure(out / "main", title=f"{cfg.name}: loss terms and drift per step")
    par.barrier()
    return MitigateResult(out, final, main.steps, main.seconds, main.step_seconds, main.resumed_from)


def _projector_config(cfg: MitigateConfig, stage: ProjectorStage) -> MitigateConfig:
    """Task-loss training of the projector alone (vision and decoder frozen, no LoRA, no extra terms)."""
    return cfg.replace(train_manifest=stage.manifest, max_steps=stage.steps, lr=stage.lr, lora_r=0, lora_ranks="uniform",
                       rank_store=None, projector_beta=0.0, freeze=("vision", "decoder"), drift_weight=0.0,
                       contrast_weight=0.0, contrast_kl=0.0, align_weight=0.0, align_alpha=0.0, anchor_manifest=None,
                       replay_manifest=None, replay_fraction=0.0, pre=None, post=None)


@dataclass
class _Stage:
    final: Path
    steps: int
    seconds: float
    step_seconds: float
    resumed_from: int


class _Trainer(Objective):
    """One stage's model, trainable parameters, optional alignment head, anchors and loss terms (the loop's objective)."""

    log_name = LOG
    shared_terms = frozenset({"drift_mmd_v", "drift_w_embed", "align_weight"})  # the same on every process

    def __init__(self, cfg: MitigateConfig, model_path: str, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.adapter: ModelAdapter = load_model(model_path, attn_implementation="eager")
        torch.manual_seed(cfg.seed)
        base = self.adapter.model
        for p in base.parameters():
            p.requires_grad_(True)
        apply_freeze(self.adapter, cfg.freeze)
        self.ref_vision = None
        if cfg.align_weight and any(p.requires_grad for p in self.adapter.component("vision").parameters()):
            self.ref_vision = copy.deepcopy(self.adapter.component("vision")).eval().requires_grad_(False).to(device)
        self.ref_model = None
        if cfg.contrast_weight and cfg.contrast_kl and cfg.lora_r == 0:
            self.ref_model = copy.deepcopy(base).eval().requires_grad_(False).to(device)
        if cfg.lora_r:
            ranks = modality_ranks(layer_visual_share(cfg.rank_store), cfg.lora_r) if cfg.lora_ranks == "modality" else None
            plan = lora_plan(self.adapter, cfg.freeze, cfg.lora_r, cfg.lora_alpha, layer_ranks=ranks,
                             projector_beta=cfg.projector_beta)
            self.model = wrap_lora(base, plan)
        else:
            self.model = base
        self.model.to(device).train()
        self.head: AlignHead | None = None
        self.anchors: Anchors | None = None
        if cfg.uses_anchors:
            examples = anchor_examples(read_manifest(cfg.anchor_manifest), cfg.anchor_lang, cfg.anchors_per_concept)
            self.anchors = Anchors(self.adapter, examples, device)
        tok = getattr(self.adapter.processor, "tokenizer", self.adapter.processor)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.v0: torch.Tensor | None = None
        self.w0: torch.Tensor | None = None
        self.examples: list[Example] = []
        self.replay: list[Example] = []
        self.n_replay = 0

    # --- the loop's objective ------------------------------------------------------------------
    def batch(self, step: int) -> list[Example]:
        cfg = self.cfg
        main = [self.examples[i] for i in batch_indices(len(self.examples), step, cfg.batch_size - self.n_replay, cfg.seed)]
        extra = [self.replay[i] for i in batch_indices(len(self.replay), step, self.n_replay, cfg.seed + 1)] \
            if self.n_replay else []
        return main + extra

    def loss(self, batch: list[Example], par: Parallel) -> tuple[torch.Tensor, dict[str, float]]:
        return self.step_losses(batch, par)

    def extra_state(self) -> dict:
        return {"v0": self.v0, "w0": self.w0} if self.v0 is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.anchors is not None:
            self.v0, self.w0 = state["v0"].to(self.device), state["w0"].to(self.device)

    def write_final(self, folder: Path) -> None:
        model = self.final_model().eval()
        model.save_pretrained(folder, safe_serialization=True)
        save_processor(self.adapter.processor, folder)
        if self.head is not None:
            save_file({n: p.detach().contiguous().cpu() for n, p in self.head.state_dict().items()},
                      folder / "align_head.safetensors")
        save_config(self.cfg, folder / CONFIG_FILE)

    # --- pieces of a step -----------------------------------------------------------------------
    def init_head(self, batch: list[Example]) -> None:
        """The alignment head, sized from the decoder width and the target features of a first batch."""
        if not self.cfg.align_weight:
            return
        inputs = self.adapter.build_inputs(batch[:1], padding_side="right").to(self.device)
        with torch.no_grad():
            target = self.targets(inputs, None)[0]
        torch.manual_seed(self.cfg.seed + 1)
        self.head = AlignHead(self.adapter.text_config.hidden_size, self.cfg.align_hidden, target.shape[-1]).to(self.device)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if self.head is not None:
            params.update({HEAD + n: p for n, p in self.head.named_parameters()})
        return params

    def targets(self, inputs, captured: torch.Tensor | None) -> list[torch.Tensor]:
        """Frozen vision features per example, one row per visual token: the projector's input of a frozen tower.

        With the vision tower frozen (the usual recipe) that is the live projector input, captured in the
        main forward at no cost; otherwise a frozen copy of the initial tower is swapped in for one vision pass.
        """
        if captured is None or self.ref_vision is not None:
            captured = self._projector_input(inputs, swap=self.ref_vision is not None)
        rows = self.adapter.visual_rows("projector.in", captured.detach(), inputs)
        visual = self.adapter.n_visual_tokens(inputs.segments).tolist()
        if [len(r) for r in rows] != visual:
            raise ValueError(f"L_align: {self.adapter.name!r} has projector-input rows {[len(r) for r in rows]} for "
                             f"{visual} visual tokens; one target row per visual token is needed")
        return rows

    def _projector_input(self, inputs, swap: bool) -> torch.Tensor:
        with torch.no_grad(), (self.adapter.replaced_component("vision", self.ref_vision) if swap else nullcontext()):
            return self.adapter.projector_input(inputs, model=self.model)

    def step_losses(self, batch: list[Example], par: Parallel) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's share of the step's loss (its gradients summed over processes give the whole batch's).

        Each mean over rows or answer tokens is rescaled to a sum over this shard divided by the count over all
        shards; terms every process computes alike (the anchors') are divided by the number of processes.

        Step cost (issue 12; every saving computes the same values as before, except the first, which computes
        what the proposal writes): L_contrast's image-free pass is the text-only sequence (image span removed,
        P(y | x)) instead of a full-length blank-image pass; the anchors' vision-tower output is computed once
        while the tower is frozen (only the projector runs per step); the anchors carry no graph when they are
        only logged; the median heuristic selects instead of sorting (torch.quantile took ~30 ms of a ~100 ms
        step on the organism); L_align runs its head once per layer over all visual rows, not once per example.
        """
        cfg = self.cfg
        inputs = self.adapter.build_inputs(batch, padding_side="right").to(self.device)
        local_tok = int((inputs.labels[:, 1:] != -100).sum())
        tok_share = local_tok / par.sum(local_tok)
        row_share = len(batch) / par.sum(len(batch))
        captured: list[torch.Tensor] = []
        handle = None
        if cfg.align_weight and self.ref_vision is None:
            handle = self.adapter.component("projector").register_forward_pre_hook(
                lambda _m, args, kwargs: captured.append(self.adapter.site_tensor("projector.in", (args, kwargs))),
                with_kwargs=True)
        try:
            out = self.model(**inputs.inputs, labels=inputs.labels, output_hidden_states=bool(cfg.align_weight))
        finally:
            if handle is not None:
                handle.remove()
        logits = out.logits
        total = out.loss * tok_share
        row: dict[str, float] = {"task": float(out.loss.detach()) * tok_share}
        drift = 0.0
        if self.anchors is not None:
            with torch.set_grad_enabled(bool(cfg.drift_weight)):  # only logged without L_drift: no graph needed
                v = self.anchors.projected(self.model)
                w = self.anchors.word_embeddings()
            drift = float(rbf_mmd2(v.detach(), self.v0, unbiased=False))
            row["drift_mmd_v"] = drift
            row["drift_w_embed"] = wasserstein(w, self.w0)
            if cfg.drift_weight:
                l_drift = rbf_mmd2(v, w)
                total = total + cfg.drift_weight * l_drift / par.world
                row["drift"] = float(l_drift.detach()) / par.world
        if cfg.contrast_weight:
            # a second, shorter forward: folding the text rows into the image rows' forward (padded to their
            # width) measured slower on the organism (1.76x vs 1.34x plain for the contrast term alone)
            text_inputs, text_labels = text_only(inputs, self.pad_id)
            logits_t = self.model(**text_inputs).logits
            l_c = contrast_margin(answer_logprob(logits, inputs.labels), answer_logprob(logits_t, text_labels),
                                  cfg.contrast_margin) * row_share
            if cfg.contrast_kl:
                with torch.no_grad():
                    if self.ref_model is not None:
                        ref = self.ref_model(**inputs.inputs).logits
                    else:
                        with self.model.disable_adapter():
                            ref = self.model(**inputs.inputs).logits
                l_c = l_c + cfg.contrast_kl * answer_kl(ref, logits, inputs.labels) * tok_share
            total = total + cfg.contrast_weight * l_c
            row["contrast"] = float(l_c.detach())
        if cfg.align_weight:
            targets = self.targets(inputs, captured[0] if captured else None)
            layers = cfg.align_layers or (self.adapter.num_layers // 2,)
            # every example's visual positions at once, row by row in sequence order (visual_positions' order):
            # one head call per layer instead of one per example
            visual = inputs.segments == int(Segment.VISUAL)
            counts = [len(t) for t in targets]
            tgt = torch.cat(targets)
            preds = torch.cat([self.head(out.hidden_states[layer][visual]) for layer in layers])
            l_a = align_loss_rows(preds, tgt.repeat(len(layers), 1), counts * len(layers)) * row_share
            weight = align_weight(cfg.align_weight, cfg.align_alpha, drift)
            total = total + weight * l_a
            row["align"] = float(l_a.detach())
            row["align_weight"] = weight
        row["loss"] = float(total.detach())
        return total, row

    def final_model(self) -> torch.nn.Module:
        """The trained model with LoRA merged in (a plain transformers model the probe loads directly)."""
        return self.model.merge_and_unload() if self.cfg.lora_r else self.model


IMAGE_SEGMENTS = (Segment.VISUAL, Segment.IMAGE_START, Segment.IMAGE_END, Segment.IMAGE_SEP)


def text_only(inputs: ModelInputs, pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The batch without its images: every image position (visual tokens, image markers, separators) removed.

    The same token sequence as the model sees with the image, minus the image's span, right-padded again:
    the decoder computes P(y | text) literally, as the proposal writes it, on a shorter sequence. Per-position
    tensors (input_ids, attention_mask, token_type_ids, ...) are cut alike; image tensors are dropped.
    Returns the forward's keyword arguments and the labels aligned with them.
    """
    segs = inputs.segments
    keep = (segs != int(Segment.PAD)) & ~torch.isin(segs, torch.tensor([int(s) for s in IMAGE_SEGMENTS], device=segs.device))
    lengths = keep.sum(-1)
    width = int(lengths.max())
    cols = torch.arange(width, device=segs.device)
    valid = cols[None, :] < lengths[:, None]
    # stable order of kept positions per row, padding positions after them
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :width]
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.inputs.items():
        if not (isinstance(value, torch.Tensor) and value.shape[:2] == segs.shape):
            continue  # pixel values, image sizes, grids: the images are gone
        cut = value.gather(1, order.reshape(order.shape + (1,) * (value.dim() - 2)).expand(order.shape + value.shape[2:]))
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.where(valid.reshape(valid.shape + (1,) * (value.dim() - 2)), cut, torch.full_like(cut, fill))
    out["attention_mask"] = valid.to(inputs.inputs["attention_mask"].dtype)
    labels = inputs.labels.gather(1, order).masked_fill(~valid, -100)
    return out, labels


def _run(cfg: MitigateConfig, model_path: str, folder: Path, *, progress: bool,
         callback: Callable[[int, dict], None] | None = None) -> _Stage:
    final = folder / "final"
    if (final / "config.json").is_file():  # finished earlier: its step times are in its log
        logged = [json.loads(ln)["seconds"] for ln in (folder / LOG).read_text().splitlines() if ln.strip()] \
            if (folder / LOG).is_file() else []
        step_s = statistics.median(logged[1:] if len(logged) > 1 else logged) if logged else float("nan")
        return _Stage(final, cfg.max_steps, 0.0, step_s, cfg.max_steps)
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    par = Parallel(cfg.device)
    tr = _Trainer(cfg, model_path, par.device)
    examples = read_manifest(cfg.train_manifest)
    missing = [ex.id for ex in examples if ex.answer is None]
    if not examples or missing:
        raise ValueError(f"{cfg.train_manifest}: no examples" if not examples else
                         f"{cfg.train_manifest}: example {missing[0]!r} has no answer")
    tr.examples = examples
    tr.replay = read_manifest(cfg.replay_manifest) if cfg.replay_manifest else []
    tr.n_replay = int(round(cfg.replay_fraction * cfg.batch_size)) if tr.replay else 0
    tr.init_head(tr.batch(0))
    params = tr.trainable()
    if not params:
        raise ValueError(f"recipe {cfg.name!r}: nothing to train (freeze={cfg.freeze})")
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr)
    if not checkpoints(folder) and tr.anchors is not None:  # the drift reference: the anchors before training
        with torch.no_grad():
            tr.v0 = tr.anchors.projected(tr.model).detach().clone()
            tr.w0 = tr.anchors.word_embeddings().detach().clone()
    settings = LoopSettings(cfg.max_steps, cfg.checkpoint_every, cfg.keep_checkpoints, grad_clip=1.0, desc=cfg.name)
    fingerprint = {k: v for k, v in config_dict(cfg).items() if k not in RUN_ONLY}
    done = run_loop(folder, tr, opt, settings, fingerprint=fingerprint, par=par, callback=callback, progress=progress)
    write_final(folder, tr, par)
    times = done.step_seconds
    step_s = statistics.median(times[1:] if len(times) > 1 else times) if times and par.main else float("nan")
    return _Stage(final, cfg.max_steps, done.seconds, step_s, done.resumed_from)


__all__ = ["MitigateResult", "StopTraining", "mitigate"]
