"""Teacher-forced scoring under an intervention, through probe.eval's one answer log-probability and ranking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from interventions.base import Intervention
from probe.data.example import Example
from probe.eval.predict import Around, answer_logprob, answer_logprobs, candidate_logprobs
from probe.models.base import ModelAdapter, ModelInputs

__all__ = ["answer_logprob", "forward_logprob", "rank_answers", "score_answers", "under"]


def under(intervention: Intervention | None) -> Around:
    """around(batch) for probe.eval's scoring: the intervention told the batch and installed (None: nothing).

    Always given, so every condition (the unedited one too) is scored by the same full-forward path: an edit of the
    forward needs the whole sequence in one call, and a no-op edit stays bit-identical to no edit.
    """
    @contextmanager
    def around(batch: ModelInputs) -> Iterator[None]:
        if intervention is None:
            yield
            return
        intervention.set_batch(batch)
        with intervention:
            yield

    return around


@torch.no_grad()
def forward_logprob(adapter: ModelAdapter, batch: ModelInputs, intervention: Intervention | None = None) -> torch.Tensor:
    """One forward of `batch` (with answers) under `intervention` -> the answer's log-probability per row [b]."""
    if batch.labels is None:
        raise ValueError("forward_logprob: the batch has no answers to score")
    with under(intervention)(batch) if intervention is not None else nullcontext():
        logits = adapter.model(**batch.inputs).logits
    return answer_logprob(logits, batch.labels).cpu()


def score_answers(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    intervention: Intervention | None = None,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Log-probability of each example's `answer` under the intervention: [n] float64."""
    return np.asarray(answer_logprobs(adapter, examples, batch_size, under(intervention)), dtype=np.float64)


def rank_answers(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    choices: Sequence[Sequence[str]],
    intervention: Intervention | None = None,
    *,
    batch_size: int = 16,
) -> tuple[list[str], list[np.ndarray]]:
    """Per example, the candidate with the highest log-likelihood (the first on a tie), and every candidate's."""
    scores = candidate_logprobs(adapter, examples, choices, batch_size=batch_size, around=under(intervention))
    per = [np.asarray(s, dtype=np.float64) for s in scores]
    return [cands[int(np.argmax(block))] for cands, block in zip(choices, per)], per
