"""Exact attention probabilities for chosen queries, block by block, from post-RoPE q/k.

Nothing here ever holds a [seq, seq] tensor per head: probabilities are formed for at most
`block` queries at a time ([batch, head, block, seq]), and the model's 4-D mask is read by
gathering only the rows of those queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from probe.segments import Segment, last_prompt_index

N_SEGMENTS = len(Segment)
N_SOURCES = 3  # last_prompt, answer, text


@dataclass(frozen=True)
class MaskSource:
    """What decides which keys a query may see, as the model's attention call saw it.

    mask4d: the 4-D mask the call received ([b|1, h|1, q, kv], bool True=attend, or additive float), or None.
    key_valid: [batch, seq] bool, used when mask4d is None (causal + key padding + sliding window).
    """

    mask4d: torch.Tensor | None
    key_valid: torch.Tensor
    causal: bool
    window: int | None

    def bias(self, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Additive float32 bias for the queries at `pos` ([batch, n]) -> [batch, 1|head, n, kv_len]."""
        batch, n = pos.shape
        if self.mask4d is not None:
            m = self.mask4d[..., :kv_len]
            heads = m.shape[1]
            # queries and keys cover the same full sequence here, so a broadcast query axis expands to kv_len
            m = m.expand(batch, heads, kv_len, kv_len)
            rows = m.gather(2, pos[:, None, :, None].expand(batch, heads, n, kv_len))
            if rows.dtype == torch.bool:
                return torch.zeros(rows.shape, dtype=torch.float32, device=rows.device).masked_fill_(~rows, float("-inf"))
            return rows.to(torch.float32)
        kpos = torch.arange(kv_len, device=pos.device)
        allowed = self.key_valid[:, None, None, :].expand(batch, 1, n, kv_len)
        qp = pos[:, None, :, None]
        if self.causal:
            allowed = allowed & (kpos <= qp)
        if self.window is not None:
            allowed = allowed & (qp - kpos < self.window)
        return torch.zeros((batch, 1, n, kv_len), dtype=torch.float32, device=pos.device).masked_fill(~allowed, float("-inf"))


def prob_blocks(
    query: torch.Tensor,
    key: torch.Tensor,
    pos: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSource,
    block: int,
    softcap: float | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Softmax rows (float32) of the queries at `pos`, `block` queries at a time.

    query: [batch, head, seq, d], key: [batch, kv_head, seq, d], pos: [batch, n] (entries < 0 are
    computed at position 0 and must be ignored by the caller) -> yields (slice of n, [batch, head, nb, seq]).
    """
    batch, heads, _, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    k_t = key.to(torch.float32).transpose(-1, -2)  # [b, kv, d, T]
    for start in range(0, pos.shape[1], block):
        sl = slice(start, min(start + block, pos.shape[1]))
        p = pos[:, sl].clamp_min(0)
        nb = p.shape[1]
        q = query.gather(2, p[:, None, :, None].expand(batch, heads, nb, d)).to(torch.float32)
        # head h = kv * groups + g (repeat_kv order); fold the groups into the query axis so k is never repeated
        scores = torch.matmul(q.reshape(batch, kv_heads, groups * nb, d), k_t).view(batch, heads, nb, kv_len)
        scores = scores * scaling
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        scores = scores + mask.bias(p, kv_len)
        yield sl, torch.softmax(scores, dim=-1)


def source_weights(segments: torch.Tensor) -> torch.Tensor:
    """Weight of each query in each source's mean: [batch, seq] -> [batch, 3, seq] float32.

    Sources: last_prompt (the last non-pad non-answer position), answer (ANSWER queries),
    text (TEXT queries).
    """
    batch, seq = segments.shape
    w = torch.zeros((batch, N_SOURCES, seq), dtype=torch.float32, device=segments.device)
    lp = last_prompt_index(segments)
    has_lp = lp >= 0
    w[has_lp, 0, lp[has_lp]] = 1.0
    for i, seg in ((1, Segment.ANSWER), (2, Segment.TEXT)):
        m = (segments == seg).to(torch.float32)
        w[:, i] = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
    return w


def needed_positions(weights: torch.Tensor) -> torch.Tensor:
    """Positions with any source weight, per row, padded with -1: [batch, 3, seq] -> [batch, n_max] long."""
    used = weights.sum(dim=1) > 0  # [b, T]
    n_max = int(used.sum(dim=1).max().item()) if used.numel() else 0
    seq = used.shape[1]
    pos = torch.arange(seq, device=used.device).expand_as(used)
    # stable sort puts the used positions first, in order
    key = torch.where(used, pos, pos + seq)
    order = key.sort(dim=1, stable=True).values[:, :n_max]
    return torch.where(order < seq, order, torch.full_like(order, -1))


def attention_shares(
    query: torch.Tensor,
    key: torch.Tensor,
    segments: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSource,
    block: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean attention mass per segment for each source: -> [batch, head, 3, n_segments] float32, NaN if no query.

    Only the queries some source averages over are ever formed; `block` None means all at once.
    """
    batch, heads = query.shape[:2]
    weights = source_weights(segments)
    pos = needed_positions(weights)
    w = weights.gather(2, pos.clamp_min(0)[:, None, :].expand(batch, N_SOURCES, pos.shape[1]))
    w = w.masked_fill((pos < 0)[:, None, :], 0.0)  # [b, 3, n]
    onehot = torch.nn.functional.one_hot(segments.long().clamp_min(0), N_SEGMENTS).to(torch.float32)  # [b, T, S]
    # float64 accumulator: thousands of per-block partial sums would otherwise drift by ~1e-6
    share = torch.zeros((batch, heads, N_SOURCES, N_SEGMENTS), dtype=torch.float64, device=query.device)
    n = pos.shape[1]
    for sl, probs in prob_blocks(query, key, pos, scaling=scaling, mask=mask, block=block or max(n, 1), softcap=softcap):
        mass = torch.matmul(probs, onehot[:, None])  # [b, h, nb, S]
        wb = w[:, :, sl]
        # a query with zero weight may be fully masked (NaN row): drop it rather than multiply NaN by 0
        mass = torch.where((wb.sum(dim=1) > 0)[:, None, :, None], mass, 0.0)
        share += torch.einsum("bhns,bcn->bhcs", mass.double(), wb.double())
    empty = weights.sum(dim=2) == 0  # [b, 3]
    return share.to(torch.float32).masked_fill(empty[:, None, :, None], float("nan"))


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    query_positions: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSource,
    block: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Full attention rows of the selected queries: query_positions [batch, Q] (-1 absent) -> [batch, head, Q, seq] float32.

    Absent queries are NaN rows; masked keys have probability 0.
    """
    batch, heads = query.shape[:2]
    n = query_positions.shape[1]
    rows = torch.full((batch, heads, n, key.shape[2]), float("nan"), dtype=torch.float32, device=query.device)
    for sl, probs in prob_blocks(query, key, query_positions, scaling=scaling, mask=mask, block=block or max(n, 1), softcap=softcap):
        present = (query_positions[:, sl] >= 0)[:, None, :, None]
        rows[:, :, sl] = torch.where(present, probs, float("nan"))
    return rows
