"""Teacher-forced scoring under an intervention: the answer's log-probability, and ranking candidate answers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from interventions.base import Intervention
from probe.data.example import Example
from probe.models.base import ModelAdapter, ModelInputs


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the labelled (answer) tokens per row: logits [b, T, V], labels [b, T] -> [b] float64."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # where, not a product: a contrastive cut-off leaves -inf off the answer, and -inf * 0 would be NaN
    return torch.where(mask, tok, torch.zeros_like(tok)).sum(1)


@torch.no_grad()
def forward_logprob(adapter: ModelAdapter, batch: ModelInputs, intervention: Intervention | None = None) -> torch.Tensor:
    """One forward of `batch` (with answers) under `intervention` -> the answer's log-probability per row [b]."""
    if batch.labels is None:
        raise ValueError("forward_logprob: the batch has no answers to score")
    if intervention is not None:
        intervention.set_batch(batch)
    with intervention if intervention is not None else nullcontext():
        logits = adapter.model(**batch.inputs).logits
    return answer_logprob(logits, batch.labels.to(logits.device)).cpu()


def score_answers(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    intervention: Intervention | None = None,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Log-probability of each example's `answer` under the intervention: [n] float64."""
    device = next(adapter.model.parameters()).device
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = adapter.build_inputs(examples[start : start + batch_size], padding_side="right").to(device)
        out += forward_logprob(adapter, batch, intervention).tolist()
    return np.asarray(out, dtype=np.float64)


def rank_answers(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    choices: Sequence[Sequence[str]],
    intervention: Intervention | None = None,
    *,
    batch_size: int = 16,
) -> tuple[list[str], list[np.ndarray]]:
    """Per example, the candidate with the highest log-likelihood, and every candidate's log-likelihood."""
    flat = [replace(ex, answer=c) for ex, cands in zip(examples, choices, strict=True) for c in cands]
    scores = score_answers(adapter, flat, intervention, batch_size=batch_size)
    preds, per, i = [], [], 0
    for cands in choices:
        block = scores[i : i + len(cands)]
        preds.append(cands[int(np.argmax(block))])
        per.append(block)
        i += len(cands)
    return preds, per
