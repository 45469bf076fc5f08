"""Token roles an intervention selects by: the query sources and position sets of probe.vocab (one definition)."""

from __future__ import annotations

import torch

from probe.vocab import QUERY_SOURCES, position_mask, query_mask

__all__ = ["PATCH_SEGMENTS", "QUERY_SOURCES", "padded_positions", "position_mask", "query_mask"]

PATCH_SEGMENTS: tuple[str, ...] = ("visual", "text", "last_prompt")


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the True entries per row, right-padded with -1: [batch, seq] bool -> [batch, n_max] long."""
    counts = mask.sum(1)
    n = int(counts.max()) if mask.numel() else 0
    out = torch.full((mask.shape[0], n), -1, dtype=torch.long, device=mask.device)
    for b in range(mask.shape[0]):
        pos = mask[b].nonzero().flatten()
        out[b, : pos.numel()] = pos
    return out
