"""Answer prediction for short-answer QA: rank candidate answers by log-likelihood, or decode greedily."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import torch

from probe.data.example import Example
from probe.models.base import ModelAdapter
from probe.progress import progress_bar


def normalise(text: str) -> str:
    """Case- and punctuation-insensitive form of a short answer."""
    return re.sub(r"[\s.,!?;:\"']+$", "", text.strip()).strip().lower()


@torch.no_grad()
def answer_logprobs(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int) -> list[float]:
    """Summed log-probability of each example's `answer` tokens (the adapter's ANSWER labels) given the rest."""
    device = next(adapter.model.parameters()).device
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = adapter.build_inputs(chunk, padding_side="right").to(device)
        if batch.labels is None:
            raise ValueError("answer_logprobs: the adapter produced no labels (examples need answers)")
        logits = adapter.model(**batch.inputs).logits.float()
        labels = batch.labels[:, 1:]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        mask = labels != -100
        tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out += (tok * mask).sum(dim=1).tolist()
    return out


def rank_choices(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """For each example, the candidate answer with the highest log-likelihood."""
    flat = [replace(ex, answer=c) for ex, cands in zip(examples, choices, strict=True) for c in cands]
    scores: list[float] = []
    step = batch_size * 8
    for start in progress_bar(range(0, len(flat), step), desc="rank", disable=not progress, leave=False):
        scores += answer_logprobs(adapter, flat[start : start + step], batch_size)
    preds: list[str] = []
    i = 0
    for cands in choices:
        block = scores[i : i + len(cands)]
        preds.append(cands[max(range(len(cands)), key=block.__getitem__)])
        i += len(cands)
    return preds


@torch.no_grad()
def greedy_answers(
    adapter: ModelAdapter, examples: Sequence[Example], *, batch_size: int = 16, max_new_tokens: int = 16
) -> list[str]:
    """Greedy-decoded answers (for examples without a candidate list)."""
    device = next(adapter.model.parameters()).device
    tokenizer = getattr(adapter.processor, "tokenizer", adapter.processor)
    preds: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = [replace(ex, answer=None) for ex in examples[start : start + batch_size]]
        batch = adapter.build_inputs(chunk, padding_side="left").to(device)
        seq = adapter.model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = seq[:, batch.inputs["input_ids"].shape[1] :]
        preds += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return preds
