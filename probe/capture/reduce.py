"""Pure tensor reductions the capture applies before anything leaves the forward pass."""

from __future__ import annotations

import torch

from probe.segments import Segment, last_prompt_index

N_SEGMENTS = len(Segment)


def query_positions(segments: torch.Tensor, max_answer_tokens: int) -> torch.Tensor:
    """Padded positions of the query slots (last prompt token, first answer tokens); -1 if absent.

    segments: [batch, seq] -> [batch, 1 + max_answer_tokens] long.
    """
    batch, seq = segments.shape
    out = torch.full((batch, 1 + max_answer_tokens), -1, dtype=torch.long, device=segments.device)
    out[:, 0] = last_prompt_index(segments)
    if max_answer_tokens:
        pos = torch.arange(seq, device=segments.device)
        for b in range(batch):
            ans = pos[segments[b] == Segment.ANSWER][:max_answer_tokens]
            out[b, 1 : 1 + ans.numel()] = ans
    return out


def pool_segments(hidden: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` over the positions of each segment; NaN for an empty segment and for PAD
    (padding depends on batch composition, so it is never summarised).

    hidden: [batch, seq, d], segments: [batch, seq] -> [batch, n_segments, d] float32.
    """
    # a comparison, not F.one_hot: one_hot checks the codes' range on the host (a GPU sync in every layer's tap)
    onehot = (segments.long()[..., None] == torch.arange(N_SEGMENTS, device=segments.device)).to(torch.float32)
    sums = torch.einsum("bts,btd->bsd", onehot, hidden.to(torch.float32))
    onehot[..., Segment.PAD] = 0.0
    counts = onehot.sum(dim=1).unsqueeze(-1)  # [b, S, 1]
    pooled = sums / counts.clamp_min(1.0)
    return pooled.masked_fill(counts == 0, float("nan"))


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of `hidden` at `positions` (-1 gives NaN).

    hidden: [batch, seq, d], positions: [batch, Q] -> [batch, Q, d] float32.
    """
    safe = positions.clamp_min(0)
    rows = torch.gather(hidden.to(torch.float32), 1, safe.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return rows.masked_fill((positions < 0).unsqueeze(-1), float("nan"))


def unpadded_index(segments: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the padded positions of the non-pad tokens, in order: [batch] list of [len] long."""
    return [torch.nonzero(row != Segment.PAD, as_tuple=False).squeeze(-1) for row in segments]


def to_unpadded(x: torch.Tensor, index: torch.Tensor, dim: int, size: int, fill: float = float("nan")) -> torch.Tensor:
    """Select `index` along `dim` of one example's tensor and pad that dim to `size` with `fill`."""
    picked = x.index_select(dim, index.to(x.device))
    if picked.shape[dim] > size:
        raise ValueError(f"sequence of {picked.shape[dim]} tokens exceeds the store's {size} positions")
    pad_shape = list(picked.shape)
    pad_shape[dim] = size - picked.shape[dim]
    return torch.cat([picked, picked.new_full(pad_shape, fill)], dim=dim)


def remap_positions(positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Padded positions -> unpadded positions for one example (-1 stays -1). positions: [Q]."""
    lookup = torch.full((int(index.max()) + 2 if index.numel() else 1,), -1, dtype=torch.long)
    lookup[index.cpu()] = torch.arange(index.numel())
    pos = positions.cpu()
    return torch.where(pos >= 0, lookup[pos.clamp_min(0)], pos)
