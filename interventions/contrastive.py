"""Contrastive decoding: VCD (image vs distorted image), the text-prior contrast (image vs no image), cut-off only.

One formula covers them (log-probabilities of the image pass `a` and the contrast pass `b`):

    score = (1 + alpha) · a - alpha · b,   then tokens with p_a < beta · max p_a are cut (-inf)

- VCD (Leng et al., CVPR 2024): b from the image distorted by forward diffusion noise (their step 500 of
  1000); their alpha = 1, beta = 0.1. Their code contrasts raw logits; on log-probabilities the two differ
  by a per-row constant, so the resulting distribution is the same.
- Text prior (PAI's CFG, LALBJ/PAI CFG.py: gamma·(a - b) + b on log-softmax, cut-off log 0.1): b from the
  prompt without its image tokens; gamma = 1 + alpha (their gamma 1.1 -> alpha 0.1).
- Cut-off only: alpha = 0, beta > 0 (no contrast pass): how much of a reported gain is the cut-off's alone.

While installed, `adapter.model.forward` returns these scores as its `logits` (every position), so
teacher-forced answer ranking and `contrastive_generate` both use them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from interventions.ablation import diffusion_noise
from interventions.base import Intervention, register_intervention
from probe.data.example import Example
from probe.models.base import ModelAdapter

CONTRASTS: tuple[str, ...] = ("noise", "no_image")


def contrast_scores(a: torch.Tensor, b: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor:
    """(1 + alpha)·log_softmax(a) - alpha·log_softmax(b), cut where p_a < beta·max p_a: [..., V] float32."""
    la = torch.log_softmax(a.float(), dim=-1)
    out = la if b is None or alpha == 0 else (1 + alpha) * la - alpha * torch.log_softmax(b.float(), dim=-1)
    if beta > 0:
        out = out.masked_fill(la < math.log(beta) + la.amax(-1, keepdim=True), float("-inf"))
    return out


def _without_image(kwargs: dict[str, Any], image_token_id: int) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """The same call with the image tokens removed (packed on the side the padding was not):
    (kwargs, kept [batch, seq] bool, destination [batch, seq] long index into the packed sequence)."""
    ids = kwargs["input_ids"]
    mask = kwargs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    keep = (ids != image_token_id) & mask.bool()
    left_padded = bool((mask[:, 0] == 0).any())
    n = keep.sum(1)
    width = int(n.max())
    rank = keep.long().cumsum(1) - 1
    dest = rank + (width - n)[:, None] if left_padded else rank
    new_ids = torch.zeros((ids.shape[0], width), dtype=ids.dtype, device=ids.device)  # padding: masked out
    new_mask = torch.zeros((ids.shape[0], width), dtype=mask.dtype, device=ids.device)
    b, p = keep.nonzero(as_tuple=True)
    new_ids[b, dest[b, p]] = ids[b, p]
    new_mask[b, dest[b, p]] = 1
    out = {k: v for k, v in kwargs.items() if not (k.startswith("pixel_") or k.startswith("image_"))}
    out.update(input_ids=new_ids, attention_mask=new_mask)
    if "position_ids" in out:  # the adapter's convention: positions count real tokens only
        out["position_ids"] = (new_mask.cumsum(-1) - 1).clamp_min(0)
    return out, keep, dest


@register_intervention
class ContrastiveDecoding(Intervention):
    """While installed, the model's logits are contrastive scores (see the module docstring).

    `plain_contrast`: interventions (e.g. a `Boost`) to pause during the contrast pass, as PAI runs its
    text-only pass without the attention boost; an attention edit left active in a `no_image` contrast pass
    raises, since that pass has another token layout.
    """

    name = "contrastive"

    def __init__(self, adapter: ModelAdapter, alpha: float = 1.0, beta: float = 0.1, contrast: str = "noise", *,
                 noise_step: int = 500, seed: int = 0, plain_contrast: Sequence[Intervention] = ()) -> None:
        if contrast not in CONTRASTS:
            raise ValueError(f"unknown contrast {contrast!r}; choose from {', '.join(CONTRASTS)}")
        if alpha < 0 or not 0 <= beta < 1:
            raise ValueError(f"contrastive decoding needs alpha >= 0 and 0 <= beta < 1, got {alpha}, {beta}")
        super().__init__()
        self.adapter, self.alpha, self.beta, self.contrast = adapter, float(alpha), float(beta), contrast
        self.noise_step, self.seed = int(noise_step), int(seed)
        self.plain_contrast = tuple(plain_contrast)

    @property
    def is_noop(self) -> bool:
        return self.alpha == 0 and self.beta == 0

    @property
    def forward_passes(self) -> int:
        return 2 if self.alpha > 0 else 1

    def _other(self, forward: Callable, kwargs: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        for iv in self.plain_contrast:
            iv.paused = True
        try:
            return self._contrast_pass(forward, kwargs, logits)
        finally:
            for iv in self.plain_contrast:
                iv.paused = False

    def _contrast_pass(self, forward: Callable, kwargs: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        if self.contrast == "noise":
            g = torch.Generator().manual_seed(self.seed)
            noisy = dict(kwargs, pixel_values=diffusion_noise(kwargs["pixel_values"], self.noise_step, generator=g))
            return forward(**noisy).logits
        call, keep, dest = _without_image(kwargs, self.adapter.image_token_id)
        text = forward(**call).logits
        full = logits.clone()  # image positions have no text-only counterpart: contrasted with themselves
        b, p = keep.nonzero(as_tuple=True)
        full[b, p] = text[b, dest[b, p]].to(full.dtype)
        return full

    def _install(self) -> Callable[[], None]:
        model = self.adapter.model
        forward = model.forward
        had_own = "forward" in vars(model)

        def contrastive_forward(*args: Any, **kwargs: Any) -> Any:
            if args:
                raise TypeError("contrastive decoding: call the model with keyword arguments")
            out = forward(**kwargs)
            other = self._other(forward, kwargs, out.logits) if self.alpha > 0 else None
            out.logits = contrast_scores(out.logits, other, self.alpha, self.beta)
            return out

        model.forward = contrastive_forward

        def undo() -> None:
            if had_own:
                model.forward = forward
            else:
                del model.forward

        return undo


@torch.no_grad()
def contrastive_generate(
    adapter: ModelAdapter,
    examples: Sequence[Example],
    intervention: Intervention | None = None,
    *,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers, one example at a time, every step a full forward under `intervention` (no cache, so the
    contrast pass always sees the same prefix as the image pass)."""
    device = next(adapter.model.parameters()).device
    tokenizer = getattr(adapter.processor, "tokenizer", adapter.processor)
    eos = tokenizer.eos_token_id
    answers = []
    for ex in examples:
        batch = adapter.build_inputs([replace(ex, answer=None)], padding_side="left").to(device)
        inputs = dict(batch.inputs)
        new: list[int] = []
        for _ in range(max_new_tokens):
            if intervention is not None:
                with intervention:
                    logits = adapter.model(**inputs, use_cache=False).logits
            else:
                logits = adapter.model(**inputs, use_cache=False).logits
            tok = int(logits[0, -1].argmax())
            if tok == eos:
                break
            new.append(tok)
            step = torch.tensor([[tok]], device=device)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], step], 1)
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(step)], 1)
            if "position_ids" in inputs:
                inputs["position_ids"] = torch.cat([inputs["position_ids"], inputs["position_ids"][:, -1:] + 1], 1)
        answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers
