"""Token roles an intervention selects by: query sources and segment masks from a batch's `Segment` codes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probe.segments import Segment, last_prompt_index

QUERY_SOURCES: tuple[str, ...] = ("last_prompt", "answer", "text")
PATCH_SEGMENTS: tuple[str, ...] = ("visual", "text", "last_prompt")


def position_mask(segments: torch.Tensor, which: str) -> torch.Tensor:
    """[batch, seq] bool of the positions named by `which`.

    last_prompt: the last non-pad, non-answer position; answer: ANSWER positions; text: prompt text and
    answer positions; visual: VISUAL positions.
    """
    if which == "last_prompt":
        idx = last_prompt_index(segments)
        out = torch.zeros_like(segments, dtype=torch.bool)
        rows = (idx >= 0).nonzero().flatten()
        out[rows, idx[rows]] = True
        return out
    if which == "answer":
        return segments == Segment.ANSWER
    if which == "text":
        return (segments == Segment.TEXT) | (segments == Segment.ANSWER)
    if which == "visual":
        return segments == Segment.VISUAL
    raise ValueError(f"unknown position set {which!r}; choose from last_prompt, answer, text, visual")


def query_mask(segments: torch.Tensor, sources: Sequence[str]) -> torch.Tensor:
    """[batch, seq] bool: union of the query `sources` (QUERY_SOURCES)."""
    bad = [s for s in sources if s not in QUERY_SOURCES]
    if bad:
        raise ValueError(f"unknown query source {bad[0]!r}; choose from {', '.join(QUERY_SOURCES)}")
    out = torch.zeros_like(segments, dtype=torch.bool)
    for s in sources:
        out |= position_mask(segments, s)
    return out


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the True entries per row, right-padded with -1: [batch, seq] bool -> [batch, n_max] long."""
    counts = mask.sum(1)
    n = int(counts.max()) if mask.numel() else 0
    out = torch.full((mask.shape[0], n), -1, dtype=torch.long, device=mask.device)
    for b in range(mask.shape[0]):
        pos = mask[b].nonzero().flatten()
        out[b, : pos.numel()] = pos
    return out
