"""Answer prediction for short-answer QA: rank candidate answers by log-likelihood, or decode greedily."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

import torch

from probe.data.example import Example
from probe.eval.normalise import normalise
from probe.models.base import ModelAdapter, ModelInputs
from probe.progress import progress_bar

__all__ = ["Around", "answer_logprob", "answer_logprobs", "candidate_logprobs", "greedy_answers", "normalise",
           "rank_choices"]

# A context entered around each scoring forward, given its batch (e.g. an intervention's set_batch + install).
Around = Callable[[ModelInputs], AbstractContextManager]


def _device(adapter: ModelAdapter) -> torch.device:
    return next(adapter.model.parameters()).device


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: int = 8) -> torch.Tensor:
    """log p(target) under each row of logits: [batch, ..., vocab], [batch, ...] -> [batch, ...] float32.

    `rows` batch rows at a time, so the float32 temporaries stay a fraction of the logits' size.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # float64 given, float64 kept
    out = torch.empty(targets.shape, dtype=dtype, device=logits.device)
    for s in range(0, logits.shape[0], rows):
        chunk = logits[s : s + rows].to(dtype)
        picked = chunk.gather(-1, targets[s : s + rows].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out[s : s + rows] = picked - torch.logsumexp(chunk, dim=-1)
    return out


def _masked_sum(tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row sums of `tok` where `mask` holds; where, not a product: -inf off the answer would make NaN."""
    return torch.where(mask, tok, torch.zeros_like(tok)).sum(1)


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the labelled (answer) tokens per row: logits [b, T, V], labels [b, T] -> [b] float64.

    The one answer log-probability of the project (evaluation, the experiment runner, activation patching).
    """
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = labels[:, 1:].to(logits.device)
    mask = target != -100
    tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # where, not a product: a contrastive cut-off leaves -inf off the answer, and -inf * 0 would be NaN
    return torch.where(mask, tok, torch.zeros_like(tok)).sum(1)


@torch.no_grad()
def answer_logprobs(adapter: ModelAdapter, examples: Sequence[Example], batch_size: int,
                    around: Around | None = None) -> list[float]:
    """Summed log-probability of each example's `answer` tokens (the adapter's ANSWER labels) given the rest.

    One full forward per (example, answer): the reference `candidate_logprobs` is checked against. Logits are
    kept at the positions predicting an answer token only (`logits_to_keep` as indices) where the model allows,
    so memory does not grow with vocabulary × sequence. around(batch): a context entered around each forward
    (an intervention that needs the batch).
    """
    device = _device(adapter)
    keeps = _accepts(adapter.model, "logits_to_keep")
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = adapter.build_inputs(chunk, padding_side="right").to(device)
        if batch.labels is None:
            raise ValueError("answer_logprobs: the adapter produced no labels (examples need answers)")
        labels = batch.labels[:, 1:]
        with around(batch) if around is not None else nullcontext():
            if keeps and around is None:  # the columns whose next token is an answer token (an edit such as
                # contrastive decoding wraps the forward and needs every position's logits)
                cols = (labels != -100).any(0).nonzero().flatten()
                logits = adapter.model(**batch.inputs, logits_to_keep=cols).logits
                labels = labels[:, cols]
            else:
                logits = adapter.model(**batch.inputs).logits[:, :-1]
        out += _masked_sum(_token_logprobs(logits.double(), labels.to(logits.device)), labels != -100).tolist()
    return out


class _Continuations:
    """Each candidate string's tokens after the prompt (ids and label flags), learnt once from one full build.

    The project's adapters append the answer's tokens to the prompt's (probe.models._inputs.assemble), so a
    candidate's continuation does not depend on the prompt; the one build per candidate checks that the
    prompt part of its row equals that example's prompt.
    """

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.known: dict[str, tuple[list[int], list[bool]]] = {}

    def get(self, example: Example, candidate: str, prompt_ids: list[int]) -> tuple[list[int], list[bool]] | None:
        """(token ids, is-label flags) of the candidate's continuation; None when the build is not prompt + answer."""
        if candidate not in self.known:
            full = self.adapter.build_inputs([replace(example, answer=candidate)], padding_side="right")
            if full.labels is None:
                return None
            ids = full.inputs["input_ids"][0].tolist()
            labels = full.labels[0].tolist()
            n = int(full.inputs["attention_mask"][0].sum()) if "attention_mask" in full.inputs else len(ids)
            p = len(prompt_ids)
            if ids[:p] != prompt_ids or p >= n:
                return None
            self.known[candidate] = (ids[p:n], [lab != -100 for lab in labels[p:n]])
        return self.known[candidate]


def _accepts(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _chunks(choices: Sequence[Sequence[str]], rows: int) -> list[range]:
    """Consecutive example ranges whose candidates add up to at most `rows` (at least one example each)."""
    out, start, total = [], 0, 0
    for i, cands in enumerate(choices):
        if i > start and total + len(cands) > rows:
            out.append(range(start, i))
            start, total = i, 0
        total += len(cands)
    if start < len(choices):
        out.append(range(start, len(choices)))
    return out


@torch.no_grad()
def _shared_prefix_chunk(
    adapter: ModelAdapter, examples: Sequence[Example], choices: Sequence[Sequence[str]], cont: _Continuations
) -> list[list[float]] | None:
    """Scores of one chunk: the prompts run once (left-padded), every candidate continues from their KV cache.

    The continuation's positions come from the adapter (`continuation_positions`: 1-D RoPE, or M-RoPE's three
    axes continuing from the prompt's largest position). None when this adapter/model cannot do it exactly (no
    positions to continue from, no KV cache), so the caller falls back to one full forward per candidate.
    """
    model, device = adapter.model, _device(adapter)
    prompts = adapter.build_inputs([replace(ex, answer=None) for ex in examples], padding_side="left").to(device)
    inputs = prompts.inputs
    # transformers 5.x renames `past_key_values` to `cache` (both accepted until 5.40): use whichever forward names
    cache_arg = next((n for n in ("cache", "past_key_values") if _accepts(model, n)), None)
    if cache_arg is None:
        return None
    mask = inputs["attention_mask"]
    lengths = mask.sum(-1)
    rows: list[tuple[int, list[int], list[bool]]] = []
    for i, (ex, cands) in enumerate(zip(examples, choices)):
        prompt_ids = inputs["input_ids"][i, mask.shape[1] - int(lengths[i]) :].tolist()
        for c in cands:
            got = cont.get(ex, c, prompt_ids)
            if got is None:
                return None
            rows.append((i, *got))
    width = max(len(ids) for _, ids, _ in rows)
    owner = torch.tensor([i for i, _, _ in rows], device=device)
    positions = adapter.continuation_positions(prompts, owner, width)
    if positions is None:
        return None
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    out = model(**inputs, use_cache=True, **extra)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    first = out.logits[:, -1]  # left padding: the last column is every prompt's last token
    del out
    ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    flags = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for r, (_, tok, lab) in enumerate(rows):
        ids[r, : len(tok)] = torch.tensor(tok)
        flags[r, : len(lab)] = torch.tensor(lab)
    cont_mask = (torch.arange(width, device=device)[None] < torch.tensor([len(t) for _, t, _ in rows], device=device)[:, None])
    cache.batch_select_indices(owner)  # each candidate row gets its prompt's keys and values
    step = model(input_ids=ids, attention_mask=torch.cat([mask[owner], cont_mask.long()], dim=1),
                 position_ids=positions, use_cache=True, **{cache_arg: cache})
    # token m of a continuation is predicted by the prompt's last logits (m = 0) or the continuation's m-1
    tok = torch.cat([_token_logprobs(first[owner, None], ids[:, :1]), _token_logprobs(step.logits[:, :-1], ids[:, 1:])], 1)
    return _per_example((tok * flags).sum(dim=1).tolist(), choices)


def _per_example(flat: list[float], choices: Sequence[Sequence[str]]) -> list[list[float]]:
    """Split scores of the flattened (example, candidate) rows back per example."""
    out, r = [], 0
    for cands in choices:
        out.append(flat[r : r + len(cands)])
        r += len(cands)
    return out


def candidate_logprobs(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    progress: bool = False,
    around: Around | None = None,
) -> list[list[float]]:
    """Summed log-probability of every candidate answer of every example: [example][candidate].

    Each prompt (image included) runs once; its K candidates continue from the prompt's KV cache in one
    batch of at most `batch_size` candidate rows (more when one example has more candidates). Equal to
    `answer_logprobs` on (example, candidate) pairs up to float round-off, M-RoPE families (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL) included; a model without a KV cache falls back to that full-forward path, as does every call with
    `around` (a context entered around each forward, given its batch: an edit of the forward needs the whole
    sequence in one call).
    """
    if len(examples) != len(choices):
        raise ValueError(f"candidate_logprobs: {len(examples)} examples but {len(choices)} candidate lists")
    cont = _Continuations(adapter)
    scores: list[list[float]] = []
    for span in progress_bar(_chunks(choices, batch_size), desc="rank", disable=not progress, leave=False):
        exs, cands = [examples[i] for i in span], [choices[i] for i in span]
        got = _shared_prefix_chunk(adapter, exs, cands, cont) if around is None else None
        if got is None:
            flat = [replace(ex, answer=c) for ex, cs in zip(exs, cands) for c in cs]
            got = _per_example(answer_logprobs(adapter, flat, batch_size, around), cands)
        scores += got
    return scores


def rank_choices(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    progress: bool = False,
    around: Around | None = None,
) -> list[str]:
    """For each example, the candidate answer with the highest log-likelihood (the first one on a tie)."""
    scores = candidate_logprobs(adapter, examples, choices, batch_size=batch_size, progress=progress, around=around)
    return [cands[max(range(len(cands)), key=block.__getitem__)] for cands, block in zip(choices, scores)]


@torch.no_grad()
def greedy_answers(
    adapter: ModelAdapter, examples: Sequence[Example], *, batch_size: int = 16, max_new_tokens: int = 16
) -> list[str]:
    """Greedy-decoded answers (for examples without a candidate list)."""
    device = _device(adapter)
    tokenizer = getattr(adapter.processor, "tokenizer", adapter.processor)
    preds: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = [replace(ex, answer=None) for ex in examples[start : start + batch_size]]
        batch = adapter.build_inputs(chunk, padding_side="left").to(device)
        seq = adapter.model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = seq[:, batch.inputs["input_ids"].shape[1] :]
        preds += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return preds
