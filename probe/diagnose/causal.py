"""Causal tests: which example stays visually dependent when AFTER computes with a piece of BEFORE.

One scorer serves every test so their numbers are comparable: each (example, image condition, candidate) row
is one full forward; an example is visually dependent when it is answered correctly with its own image and
follows another example's answer when shown that example's image (probe.eval.dependence's definition).
A swap re-points AFTER's parameters to BEFORE's (probe.models.swap); a patch runs BEFORE on the same tokens
and writes its residual stream into AFTER's at the chosen positions after one decoder layer
(interventions/patching.py could later call `patched_hits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from probe.data.example import Example
from probe.eval.candidates import plan_candidates
from probe.eval.dependence import mismatch_partners
from probe.eval.normalise import answers_match
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment

WHERE = ("visual", "last_prompt")  # patched positions: every visual token, or the last prompt token


@dataclass(frozen=True)
class Plan:
    """The examples, their candidate answers and mismatch partners, fixed once for every test."""

    examples: list[Example]
    choices: list[list[str]]
    partners: list[int | None]


def plan(examples: Sequence[Example], seed: int = 0) -> Plan:
    """Candidates (ranked answers, probe.eval.candidates) and mismatch partners of `examples`."""
    examples = list(examples)
    cands = plan_candidates(examples)
    open_ended = [ex.id for ex, c in zip(examples, cands) if not c.choices]
    if open_ended:
        raise ValueError(f"diagnose: example {open_ended[0]!r} has no candidate answers to rank (give labels.choices "
                         "or more examples of its language and question type)")
    return Plan(examples, [list(c.choices) for c in cands], mismatch_partners(examples, seed, cands))


def _rows(p: Plan) -> list[tuple[int, str, Example]]:
    rows = []
    for cond in ("real", "mismatched"):
        for i, ex in enumerate(p.examples):
            j = p.partners[i]
            if cond == "mismatched" and j is None:
                continue
            image = ex.image if cond == "real" else p.examples[j].image
            rows += [(i, cond, replace(ex, image=image, answer=c)) for c in p.choices[i]]
    return rows


def _answer_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = labels[:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets != -100, logp, torch.zeros_like(logp)).sum(dim=1)


def positions(batch: ModelInputs, where: str) -> torch.Tensor:
    """[batch, seq] bool: the visual tokens, or the last prompt token (the one predicting the first answer token)."""
    if where == "visual":
        return batch.segments == int(Segment.VISUAL)
    if where == "last_prompt":
        if batch.labels is None:
            raise ValueError("positions: last_prompt needs answers (labels)")
        first = (batch.labels != -100).int().argmax(dim=1)
        mask = torch.zeros_like(batch.labels, dtype=torch.bool)
        mask[torch.arange(len(first)), first - 1] = True
        return mask
    raise ValueError(f"positions: where must be one of {WHERE}, got {where!r}")


def _layer_output_hook(layer: torch.nn.Module, fn):
    """Forward hook on a decoder layer applying fn to its hidden-state output (tensor or first of a tuple)."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return layer.register_forward_hook(hook)


def _layer_input_hook(layer: torch.nn.Module, fn):
    """Forward pre-hook on decoder layer 0 applying fn to the decoder's input hidden states."""

    def hook(module, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return layer.register_forward_pre_hook(hook, with_kwargs=True)


def _hook(adapter: ModelAdapter, layer: int, fn):
    layers = adapter.decoder_layers
    return _layer_input_hook(layers[0], fn) if layer < 0 else _layer_output_hook(layers[layer], fn)


@torch.no_grad()
def _scores(adapter: ModelAdapter, rows: list[tuple[int, str, Example]], batch_rows: int,
            source: ModelAdapter | None = None, layer: int = 0, where: str = "visual") -> list[float]:
    device = next(adapter.model.parameters()).device
    out: list[float] = []
    for start in range(0, len(rows), batch_rows):
        chunk = [ex for _, _, ex in rows[start:start + batch_rows]]
        batch = adapter.build_inputs(chunk, padding_side="right").to(device)
        handle = None
        if source is not None:
            theirs = source.build_inputs(chunk, padding_side="right").to(device)
            if not torch.equal(theirs.inputs["input_ids"], batch.inputs["input_ids"]):
                raise ValueError("diagnose: BEFORE and AFTER tokenise the examples differently; residual patches need "
                                 "one tokenizer")
            saved: dict[str, torch.Tensor] = {}
            grab = _hook(source, layer, lambda h: saved.setdefault("h", h))
            try:
                source.model(**theirs.inputs)
            finally:
                grab.remove()
            mask = positions(batch, where).unsqueeze(-1)

            def put(h: torch.Tensor) -> torch.Tensor:
                return torch.where(mask, saved["h"].to(h.dtype), h)

            handle = _hook(adapter, layer, put)
        try:
            logits = adapter.model(**batch.inputs).logits
        finally:
            if handle is not None:
                handle.remove()
        out += _answer_scores(logits, batch.labels).tolist()
    return out


def visually_dependent(adapter: ModelAdapter, p: Plan, *, batch_rows: int = 64, source: ModelAdapter | None = None,
                       layer: int = 0, where: str = "visual") -> np.ndarray:
    """[examples] bool: correct with the real image and following the partner's answer with the partner's image.

    With `source`, BEFORE's (source's) residual after decoder layer `layer` (-1: the decoder's input) replaces
    AFTER's at `where` positions in every forward.
    """
    rows = _rows(p)
    scores = _scores(adapter, rows, batch_rows, source, layer, where)
    best: dict[tuple[int, str], tuple[float, str]] = {}
    for (i, cond, ex), s in zip(rows, scores):
        if (i, cond) not in best or s > best[(i, cond)][0]:  # first candidate wins a tie, as rank_choices
            best[(i, cond)] = (s, ex.answer)
    out = np.zeros(len(p.examples), dtype=bool)
    for i, ex in enumerate(p.examples):
        j = p.partners[i]
        correct = answers_match(best[(i, "real")][1], ex.answer, ex.lang)
        follows = j is not None and answers_match(best[(i, "mismatched")][1], p.examples[j].answer, ex.lang)
        out[i] = correct and follows
    return out
