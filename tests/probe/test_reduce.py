"""Capture reductions against hand-computed answers."""

import math

import torch

from probe.capture.reduce import gather_positions, pool_segments, query_positions, remap_positions, to_unpadded, unpadded_index
from probe.segments import Segment

P, T, V, A = Segment.PAD, Segment.TEXT, Segment.VISUAL, Segment.ANSWER


def test_query_positions_left_padded():
    segs = torch.tensor([[P, P, T, V, V, T, A, A], [T, V, V, T, T, A, P, P]])
    q = query_positions(segs, 3)
    assert q.tolist() == [[5, 6, 7, -1], [4, 5, -1, -1]]


def test_pool_segments_hand_case():
    segs = torch.tensor([[T, V, V, P]])
    hidden = torch.tensor([[[1.0, 0.0], [2.0, 4.0], [4.0, 8.0], [100.0, 100.0]]])
    pooled = pool_segments(hidden, segs)
    assert pooled[0, Segment.TEXT].tolist() == [1.0, 0.0]
    assert pooled[0, Segment.VISUAL].tolist() == [3.0, 6.0]
    assert all(math.isnan(x) for x in pooled[0, Segment.PAD].tolist())  # padding is never summarised
    assert all(math.isnan(x) for x in pooled[0, Segment.ANSWER].tolist())


def test_gather_and_unpad():
    segs = torch.tensor([[P, T, V, A]])
    hidden = torch.arange(8, dtype=torch.float32).reshape(1, 4, 2)
    rows = gather_positions(hidden, torch.tensor([[3, -1]]))
    assert rows[0, 0].tolist() == [6.0, 7.0] and math.isnan(rows[0, 1, 0])
    (ix,) = unpadded_index(segs)
    assert ix.tolist() == [1, 2, 3]
    un = to_unpadded(hidden[0], ix, 0, 5)
    assert un[:3].tolist() == [[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]] and torch.isnan(un[3:]).all()
    assert remap_positions(torch.tensor([3, 1, -1]), ix).tolist() == [2, 0, -1]
