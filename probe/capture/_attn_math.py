"""Exact attention statistics from post-RoPE q/k, inside or beside the model's attention call.

Per-segment shares normally come from the model's own kernel call (`widen_for_mass` /
`shares_from_mass`): the segments' one-hot columns ride along as extra value columns, so the one
call returns the output and each query's attention mass per segment together. `attention_shares`
is the second-pass fallback (dropout active). Nothing here ever holds a [seq, seq] tensor per
head: the fallback and full rows form at most `block` queries at a time ([batch, head, block, seq]);
the model's 4-D mask is read by gathering only the rows of those queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from probe.segments import Segment, last_prompt_index
from probe.vocab import QUERY_SOURCES

N_SEGMENTS = len(Segment)
N_SOURCES = len(QUERY_SOURCES)  # last_prompt, answer, text: their meaning is probe.vocab.position_mask


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

    def rows(self, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """The mask rows of the queries at `pos` ([batch, n]): bool (True = attend) or additive float, [batch, 1|head, n, kv_len]."""
        batch, n = pos.shape
        if self.mask4d is not None:
            m = self.mask4d[..., :kv_len]
            heads = m.shape[1]
            # queries and keys cover the same full sequence here, so a broadcast query axis expands to kv_len
            m = m.expand(batch, heads, kv_len, kv_len)
            rows = m.gather(2, pos[:, None, :, None].expand(batch, heads, n, kv_len))
            return rows if rows.dtype == torch.bool else rows.to(torch.float32)
        kpos = torch.arange(kv_len, device=pos.device)
        allowed = self.key_valid[:, None, None, :].expand(batch, 1, n, kv_len)
        qp = pos[:, None, :, None]
        if self.causal:
            allowed = allowed & (kpos <= qp)
        if self.window is not None:
            allowed = allowed & (qp - kpos < self.window)
        return allowed

    def apply_(self, scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Mask `scores` [batch, head, n, kv_len] (float32) in place for the queries at `pos` ([batch, n]); returns it."""
        rows = self.rows(pos, scores.shape[-1])
        return scores.masked_fill_(~rows, float("-inf")) if rows.dtype == torch.bool else scores.add_(rows)


def exp_blocks(
    query: torch.Tensor,
    key: torch.Tensor,
    pos: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSource,
    block: int,
    softcap: float | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Unnormalised softmax numerators exp(s - max s) (float32) of the queries at `pos`, `block` queries at a time.

    query: [batch, head, seq, d], key: [batch, kv_head, seq, d], pos: [batch, n] (entries < 0 are
    computed at position 0 and must be ignored by the caller) -> yields (slice of n, [batch, head, nb, seq]).
    Dividing by the row sum gives the attention probabilities; everything happens in place on one
    [batch, head, nb, seq] buffer per block, because on CPU each extra pass over it costs as much as the matmul.
    A fully masked row is NaN.
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
        if softcap is None:
            q = q * scaling  # scaling the few queries is cheaper than scaling the scores
        # head h = kv * groups + g (repeat_kv order); fold the groups into the query axis so k is never repeated
        scores = torch.matmul(q.reshape(batch, kv_heads, groups * nb, d), k_t).view(batch, heads, nb, kv_len)
        if softcap is not None:
            scores = softcap * torch.tanh(scores * (scaling / softcap))
        mask.apply_(scores, p)
        scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
        yield sl, scores


def source_weights(segments: torch.Tensor) -> torch.Tensor:
    """Weight of each query in each source's mean: [batch, seq] -> [batch, 3, seq] float32.

    Sources: last_prompt (the last non-pad non-answer position), answer (ANSWER queries),
    text (TEXT queries). Computed on the segments' device without reading a value on the host.
    """
    seq = segments.shape[1]
    lp = last_prompt_index(segments)  # -1 (no prompt) matches no position
    last = (torch.arange(seq, device=segments.device)[None, :] == lp[:, None]).to(torch.float32)
    means = []
    for seg in (Segment.ANSWER, Segment.TEXT):
        m = (segments == seg).to(torch.float32)
        means.append(m / m.sum(dim=1, keepdim=True).clamp_min(1.0))
    return torch.stack([last, *means], dim=1)


def needed_positions(weights: torch.Tensor) -> torch.Tensor:
    """Positions with any source weight, per row, padded with -1: [batch, 3, seq] -> [batch, n_max] long.

    Reads one number (n_max) on the host: call it once per batch, before the forward.
    """
    used = weights.sum(dim=1) > 0  # [b, T]
    n_max = int(used.sum(dim=1).max().item()) if used.numel() else 0
    seq = used.shape[1]
    pos = torch.arange(seq, device=used.device).expand_as(used)
    # stable sort puts the used positions first, in order
    key = torch.where(used, pos, pos + seq)
    order = key.sort(dim=1, stable=True).values[:, :n_max]
    return torch.where(order < seq, order, torch.full_like(order, -1))


def mass_codes(segments: torch.Tensor) -> list[int]:
    """Segment codes that get a value column: every code present except TEXT, whose mass is the rest.

    Reads the codes on the host: call it once per batch, before the forward (on a host copy of the segments).
    """
    present = torch.unique(segments).tolist()
    return [int(c) for c in sorted(present) if c != Segment.TEXT]


def code_onehot(segments: torch.Tensor, codes: list[int]) -> torch.Tensor:
    """[batch, seq, len(codes)] bool: which of `codes` each position holds (once per batch, on the segments' device)."""
    return segments[..., None] == torch.tensor(codes, device=segments.device, dtype=segments.dtype)


def code_placement(codes: list[int], device: torch.device | str) -> torch.Tensor:
    """[len(codes), n_segments] float64 0/1: moves per-code masses to their segment's column by one matmul."""
    place = torch.zeros((len(codes), N_SEGMENTS), dtype=torch.float64)
    place[range(len(codes)), codes] = 1.0
    return place.to(device)


def widen_width(d_qk: int, d_v: int, n_codes: int, device: torch.device, align: int | None = None) -> int:
    """Head width of the widened call: d_v + n_codes (at least d_qk) rounded up to `align`.

    align None: 1 on CPU (its fused kernel takes any width, and each extra column costs time: head dim 64,
    T = 2560, one thread: +8-10% for one extra column, +12-21% for eight), 8 elsewhere (a GPU's fused
    kernels need a multiple of 8: SDPA at width 130 runs 3.7x slower than at 128, at 136 1.4x).
    """
    align = (1 if device.type == "cpu" else 8) if align is None else int(align)
    if align < 1:
        raise ValueError(f"widening alignment must be >= 1, got {align}")
    return -(-max(d_qk, d_v + n_codes) // align) * align


def widen_for_mass(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: torch.Tensor, codes: list[int],
    scratch: dict | None = None, *, onehot: torch.Tensor | None = None, align: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of one attention call widened so its output also carries each query's mass per segment in `codes`.

    value [b, kv, T, dv] gets the one-hot columns of `codes` (from segments [b, T], or `onehot`
    [b, T, len(codes)] computed once per batch by `code_onehot`) after its own columns; q, k and v are
    zero-padded to one common width `widen_width(...)` (flash kernels need equal head dims; zero columns
    leave every q.k unchanged). The kernel must then be given the original `scaling` explicitly.
    Output columns [dv, dv + len(codes)) are the masses, in the value dtype. Reads nothing on the host
    when `onehot` is given.

    `scratch` (a dict the caller owns for one batch): when no autograd graph is needed, the wide tensors
    are kept there and reused by the next call of the same shapes, so only q, k, v are copied in (their
    zero and one-hot columns are written once per batch). The returned tensors are then overwritten by
    that next call.
    """
    batch, kv, seq, dv = value.shape
    width = widen_width(query.shape[-1], dv, len(codes), value.device, align)
    if onehot is None:
        onehot = code_onehot(segments, codes)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if scratch is not None and not grad:
        sig = (query.shape, key.shape, value.shape, query.dtype, key.dtype, value.dtype, value.device,
               torch.is_inference_mode_enabled(), width)
        if sig not in scratch:
            scratch[sig] = (query.new_zeros((*query.shape[:-1], width)), key.new_zeros((*key.shape[:-1], width)),
                            _wide_value(value, onehot, width))
        wide_q, wide_k, wide_v = scratch[sig]
        wide_q[..., : query.shape[-1]].copy_(query)
        wide_k[..., : key.shape[-1]].copy_(key)
        wide_v[..., :dv].copy_(value)
        return wide_q, wide_k, wide_v
    wide = _wide_value(value, onehot, width)
    wide[..., :dv] = value
    pad = torch.nn.functional.pad
    return pad(query, (0, width - query.shape[-1])), pad(key, (0, width - key.shape[-1])), wide


def _wide_value(value: torch.Tensor, onehot: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros of value's shape at `width`, with the one-hot columns ([b, T, n] bool) after value's own columns."""
    batch, kv, seq, dv = value.shape
    wide = value.new_zeros((batch, kv, seq, width))
    wide[..., dv : dv + onehot.shape[-1]] = onehot.to(device=value.device, dtype=value.dtype)[:, None]
    return wide


def shares_from_mass(mass: torch.Tensor, segments: torch.Tensor, codes: list[int],
                     weights: torch.Tensor | None = None, placement: torch.Tensor | None = None) -> torch.Tensor:
    """Per-source mean mass per segment from per-query masses: mass [b, T, head, len(codes)] -> [b, head, 3, n_segments].

    TEXT gets the rest of each query's unit mass; segments absent from the batch get 0; NaN where a
    source has no query. `weights`: source_weights(segments), `placement`: code_placement(codes), when the
    caller has them already (then nothing is read on the host).
    """
    weights = source_weights(segments) if weights is None else weights  # [b, 3, T]
    placement = code_placement(codes, mass.device) if placement is None else placement
    used = (weights.sum(dim=1) > 0)[:, :, None, None]
    # queries nobody averages over may be fully masked (NaN rows): drop them rather than multiply NaN by 0
    mass = torch.where(used, mass.to(torch.float64), 0.0)
    part = torch.einsum("bnhs,bcn->bhcs", mass, weights.to(torch.float64))  # [b, h, 3, w]
    share = part @ placement  # [b, h, 3, n_segments]: each code's mass in its segment's column
    share[..., int(Segment.TEXT)] = weights.sum(dim=2).to(torch.float64)[:, None] - part.sum(dim=-1)
    empty = weights.sum(dim=2) == 0  # [b, 3]
    return share.to(torch.float32).masked_fill(empty[:, None, :, None], float("nan"))


def attention_shares(
    query: torch.Tensor,
    key: torch.Tensor,
    segments: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSource,
    block: int | None,
    softcap: float | None = None,
    weights: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean attention mass per segment for each source: -> [batch, head, 3, n_segments] float32, NaN if no query.

    Only the queries some source averages over are ever formed; `block` None means all at once.
    `weights` / `pos`: source_weights(segments) / needed_positions(weights), when the caller has them already.
    This is the second-pass fallback (dropout active): it trims each block's keys to those its queries may
    see, which reads one number per block on the host.
    """
    batch, heads = query.shape[:2]
    weights = source_weights(segments) if weights is None else weights
    pos = needed_positions(weights) if pos is None else pos
    w = weights.gather(2, pos.clamp_min(0)[:, None, :].expand(batch, N_SOURCES, pos.shape[1]))
    w = w.masked_fill((pos < 0)[:, None, :], 0.0)  # [b, 3, n]
    onehot = (segments[..., None] == torch.arange(N_SEGMENTS, device=segments.device)).to(torch.float32)  # [b, T, S]
    # float64 accumulator: thousands of per-block partial sums would otherwise drift by ~1e-6
    share = torch.zeros((batch, heads, N_SOURCES, N_SEGMENTS), dtype=torch.float64, device=query.device)
    n = pos.shape[1]
    blocks = (exp_blocks(query, key, pos, scaling=scaling, mask=mask, block=block or max(n, 1), softcap=softcap)
              if softcap is not None else _segment_mass_sdpa(query, key, pos, onehot, scaling, mask, block or max(n, 1)))
    for sl, mass in blocks:
        if softcap is not None:  # exp_blocks' unnormalised numerators: every key has a segment
            mass = torch.matmul(mass, onehot[:, None])
            mass = mass / mass.sum(dim=-1, keepdim=True)
        wb = w[:, :, sl]
        # a query with zero weight may be fully masked (NaN row): drop it rather than multiply NaN by 0
        mass = torch.where((wb.sum(dim=1) > 0)[:, None, :, None], mass, 0.0)
        share += torch.einsum("bhns,bcn->bhcs", mass.double(), wb.double())
    empty = weights.sum(dim=2) == 0  # [b, 3]
    return share.to(torch.float32).masked_fill(empty[:, None, :, None], float("nan"))


def _segment_mass_sdpa(
    query: torch.Tensor, key: torch.Tensor, pos: torch.Tensor, onehot: torch.Tensor, scaling: float, mask: MaskSource,
    block: int,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Per-segment attention mass of the queries at `pos`: yields (slice of n, [batch, head, nb, n_segments]).

    The mass a query puts on each segment is its attention output with the segments' one-hot rows as
    values, so one fused float32 SDPA call per block gives it without forming the probabilities in
    Python (the values are zero-padded to the head dim so the fused kernels apply).
    """
    batch, heads, _, d = query.shape
    groups = heads // key.shape[1]
    k = key.to(torch.float32).repeat_interleave(groups, dim=1)  # head h uses kv head h // groups (repeat_kv order)
    width = max(d, N_SEGMENTS)
    v = torch.nn.functional.pad(onehot, (0, width - N_SEGMENTS))[:, None].expand(batch, heads, -1, width)
    for start in range(0, pos.shape[1], block):
        sl = slice(start, min(start + block, pos.shape[1]))
        p = pos[:, sl].clamp_min(0)
        q = query.gather(2, p[:, None, :, None].expand(batch, heads, p.shape[1], d)).to(torch.float32)
        rows = mask.rows(p, k.shape[2])
        # keys no query of the block may see (the causal future) are dropped: about half the work for text queries
        seen = (rows if rows.dtype == torch.bool else rows > float("-inf")).flatten(0, 2).any(0).nonzero()
        kmax = int(seen.max()) + 1 if seen.numel() else 1
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k[:, :, :kmax], v[:, :, :kmax], attn_mask=rows[..., :kmax], scale=scaling)
        yield sl, out[..., :N_SEGMENTS]


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
    for sl, expd in exp_blocks(query, key, query_positions, scaling=scaling, mask=mask, block=block or max(n, 1), softcap=softcap):
        present = (query_positions[:, sl] >= 0)[:, None, :, None]
        rows[:, :, sl] = torch.where(present, expd / expd.sum(dim=-1, keepdim=True), float("nan"))
    return rows
