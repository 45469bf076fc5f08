"""VDC loss terms against hand-computed answers and the published formulas (tolerances two-sided, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probe.analysis.stats import median_bandwidth as np_median_bandwidth
from probe.analysis.stats import rbf_mmd2 as np_rbf_mmd2
from train.mitigate.losses import (
    AlignHead, align_loss, align_loss_rows, align_weight, answer_kl, answer_logprob, contrast_margin, median_bandwidth, rbf_mmd2,
    wasserstein,
)

T = dict(dtype=torch.float64)


def test_mmd_hand_computed() -> None:
    # x = {0, 1}, y = {0, 3} on a line, σ = 1: k(a, b) = exp(-(a-b)²/2)
    x, y = torch.tensor([[0.0], [1.0]], **T), torch.tensor([[0.0], [3.0]], **T)
    e = math.exp
    kxy = (1 + e(-4.5) + e(-0.5) + e(-2.0)) / 4
    unbiased = e(-0.5) + e(-4.5) - 2 * kxy
    biased = (2 + 2 * e(-0.5)) / 4 + (2 + 2 * e(-4.5)) / 4 - 2 * kxy
    assert float(rbf_mmd2(x, y, 1.0)) == pytest.approx(unbiased, abs=1e-12)
    assert float(rbf_mmd2(x, y, 1.0, unbiased=False)) == pytest.approx(biased, abs=1e-12)
    assert float(rbf_mmd2(x, x, 1.0, unbiased=False)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n_y", [25, 26])  # 1485 distances (odd: one middle value) and 1540 (even: mean of two)
def test_mmd_matches_probe_stats_with_median_heuristic(n_y: int) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.5, 1.2, size=(n_y, 5))
    assert float(median_bandwidth(torch.tensor(x), torch.tensor(y))) == pytest.approx(np_median_bandwidth(x, y), rel=1e-12)
    assert float(rbf_mmd2(torch.tensor(x), torch.tensor(y))) == pytest.approx(np_rbf_mmd2(x, y), abs=1e-12)


def test_mmd_gradient_is_finite_with_repeated_points() -> None:
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0]], **T, requires_grad=True)
    rbf_mmd2(x, torch.tensor([[1.0, 1.0], [0.0, 0.0]], **T)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_wasserstein_shift_and_permutation() -> None:
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], **T)
    c = torch.tensor([0.3, 0.4], **T)  # |c| = 0.5, far smaller than the spacing: the matching is the identity
    assert wasserstein(x, x + c) == pytest.approx(0.5, abs=1e-12)
    assert wasserstein(x, (x + c)[[2, 0, 1]]) == pytest.approx(0.5, abs=1e-12)  # order does not matter
    assert wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)


def test_answer_logprob_hand_made_logits() -> None:
    # vocab 2; row: positions 0..2, labels at positions 1 and 2 (predicted from positions 0 and 1)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]], **T)
    labels = torch.tensor([[-100, 1, 0]])
    want = (math.log(0.5) + math.log(0.75)) / 2
    assert float(answer_logprob(logits, labels)[0]) == pytest.approx(want, abs=1e-12)


def test_contrast_margin_is_a_hinge() -> None:
    img, blank = torch.tensor([-0.1, -0.1, -2.0], **T), torch.tensor([-2.0, -0.5, -0.1], **T)
    # gaps 1.9, 0.4, -1.9 with margin 1: max(0, 1-gap) = 0, 0.6, 2.9
    assert float(contrast_margin(img, blank, 1.0)) == pytest.approx((0 + 0.6 + 2.9) / 3, abs=1e-12)
    # bounded: driving the text-only log-prob to -inf does not lower it below zero
    assert float(contrast_margin(torch.zeros(2, **T), torch.full((2,), -1e9, **T), 1.0)) == 0.0


def test_answer_kl_equals_closed_form() -> None:
    ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]], **T)
    cur = torch.tensor([[[math.log(3.0), 0.0], [9.0, 9.0]]], **T)  # p = (3/4, 1/4) at position 0
    labels = torch.tensor([[-100, 1]])
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(answer_kl(ref, cur, labels)) == pytest.approx(want, abs=1e-12)


def test_align_loss_known_cosines() -> None:
    pred = [torch.tensor([[1.0, 0.0], [0.0, 2.0]], **T), torch.tensor([[1.0, 1.0]], **T)]
    tgt = [torch.tensor([[3.0, 0.0], [1.0, 0.0]], **T), torch.tensor([[-1.0, -1.0]], **T)]
    # example 0: cos 1 and 0 -> -(1+0)/2; example 1: cos -1 -> +1; mean over examples
    assert float(align_loss(pred, tgt)) == pytest.approx((-0.5 + 1.0) / 2, abs=1e-12)
    stacked = align_loss_rows(torch.cat(pred), torch.cat(tgt), [2, 1])  # the same, in one call
    assert float(stacked) == pytest.approx((-0.5 + 1.0) / 2, abs=1e-12)


def test_align_head_is_virals_mlp() -> None:
    head = AlignHead(8, 16, 4)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert head(torch.zeros(3, 8)).shape == (3, 4)


def test_align_weight_grows_with_drift() -> None:
    assert align_weight(0.5, 2.0, 0.25) == pytest.approx(0.75, abs=1e-12)
    assert align_weight(0.5, 2.0, -1.0) == pytest.approx(0.5, abs=1e-12)  # a negative estimate counts as no drift
