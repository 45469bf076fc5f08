"""The loss terms of Visual Drift Compensation (VDC) and its drift measures, as plain differentiable functions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Median pairwise Euclidean distance of the pooled sample (zeros excluded), detached: the median heuristic.

    Same rule as `probe.analysis.stats.median_bandwidth` (numpy median of nonzero pdist), here on torch
    tensors so the MMD stays differentiable; the bandwidth itself carries no gradient (Gretton et al., 2012).
    """
    z = torch.cat([x, y]).detach().double()
    d = torch.pdist(z)
    d = d[d > 0]
    n = d.numel()
    if not n:
        return torch.tensor(1.0, dtype=torch.float64)
    # numpy's median (mean of the two middle values when n is even) by two selections: torch.quantile sorts,
    # about 30x slower on the ~10^5 distances of the anchor drift, which made it a large share of a VDC step
    lo, hi = torch.kthvalue(d, (n + 1) // 2).values, torch.kthvalue(d, n // 2 + 1).values
    return (lo + hi) / 2


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float | torch.Tensor | None = None, *,
             unbiased: bool = True) -> torch.Tensor:
    """MMD² between samples x [m, d] and y [n, d], k(a,b) = exp(-|a-b|²/(2σ²)), σ by the median heuristic.

    Gretton et al. (2012), JMLR 13: unbiased (eq. 3, the formula of `probe.analysis.stats.rbf_mmd2`), which can
    dip below zero when the samples agree, or biased (eq. 5, V-statistic: >= 0, exactly 0 for identical
    samples — used for the logged drift MMD(v_t, v_0)). In torch so that gradients reach both samples.
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"rbf_mmd2: each sample needs >= 2 points, got {len(x)} and {len(y)}")
    sigma = median_bandwidth(x, y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=torch.float64)
    g = (1.0 / (2.0 * sigma**2)).to(x.dtype)
    kxx = torch.exp(-g * _sqdist(x, x))
    kyy = torch.exp(-g * _sqdist(y, y))
    kxy = torch.exp(-g * _sqdist(x, y))
    m, n = len(x), len(y)
    if not unbiased:
        return kxx.mean() + kyy.mean() - 2.0 * kxy.mean()
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2.0 * kxy.mean())


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [len(a), len(b)], differentiable at zero distance (unlike cdist's sqrt)."""
    return (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1) - 2.0 * a @ b.T).clamp_min(0.0)


def wasserstein(x: torch.Tensor, y: torch.Tensor) -> float:
    """W1 between two equal-size empirical distributions in R^d (uniform weights): mean cost of the optimal matching.

    For equal sizes and uniform weights the optimal transport plan is a permutation (Birkhoff–von Neumann),
    found exactly by the Hungarian algorithm on Euclidean costs. A logged measure, not a loss (no gradient).
    """
    from scipy.optimize import linear_sum_assignment

    if x.shape != y.shape:
        raise ValueError(f"wasserstein: samples must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    cost = torch.cdist(x.detach().double(), y.detach().double()).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(np.mean(cost[rows, cols]))


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits lose the log-probabilities' small differences)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean log-probability of the labelled tokens (labels -100 elsewhere; causal shift applied): [batch]."""
    logp = F.log_softmax(_wide(logits[:, :-1]), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def contrast_margin(logp_image: torch.Tensor, logp_text: torch.Tensor, margin: float) -> torch.Tensor:
    """Bounded contrastive grounding: mean over rows of max(0, margin − (log P(y|image,x) − log P(y|x))).

    The proposal's −log P(y|image,x) + log P(y|x) is unbounded below: it is lowered without limit by driving
    P(y|x) to zero, i.e. by unlearning the text-only answer rather than by looking. The hinge asks the image
    to add `margin` nats (per answer token) over the image-free pass and stops there, so the text pass is never
    pushed further once the image already helps; the loss lies in [0, margin] whenever the image does not hurt.
    "Without the image" is the text-only pass (train.mitigate.loop.text_only: the image's tokens removed), i.e.
    P(y | x) as the proposal writes it; both log-probabilities are per-row means over the answer tokens, so the
    two passes need not share positions. (Until issue 12's second session it was a black image of the same
    size: the same meaning for a model that reads nothing from a blank, but a full-length second pass.)
    """
    return torch.relu(margin - (logp_image - logp_text)).mean()


def answer_kl(logits_ref: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(P_ref ‖ P_θ) of the next-token distributions (reference detached).

    The proposal's KL(P_visual ‖ P_text of a frozen copy) has an ambiguous direction, and pulling the visual
    prediction toward a text-only one rewards ignoring the image; we keep what we read as its intent — stay
    close to the frozen model's prediction *with* the image — in the mode-covering direction (bounded below by 0).
    """
    mask = (labels[:, 1:] != -100)
    ref = F.log_softmax(_wide(logits_ref[:, :-1]).detach(), dim=-1)
    cur = F.log_softmax(_wide(logits[:, :-1]), dim=-1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


class AlignHead(nn.Module):
    """VIRAL's alignment projector: Linear → SiLU → Linear → SiLU → Linear (cvlab-kaist/VIRAL, AlignmentProjector)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def align_loss(predicted: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """VIRAL's "direct" loss: per example, mean over visual tokens of −cos(head(h), target); mean over examples.

    predicted / targets: per example (and per aligned layer) [tokens, d] of the same shape. Targets are detached
    (a frozen encoder). Lies in [−1, 1]; −1 when every prediction points along its target.
    """
    if not predicted or len(predicted) != len(targets):
        raise ValueError(f"align_loss: {len(predicted)} predictions for {len(targets)} targets")
    per = [-(F.normalize(p, dim=-1) * F.normalize(t.detach(), dim=-1)).sum(-1).mean() for p, t in zip(predicted, targets)]
    return torch.stack(per).mean()


def align_loss_rows(predicted: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """`align_loss` on rows stacked example after example (`counts[i]` rows for example i), in one call.

    The same value as align_loss(predicted.split(counts), targets.split(counts)): the mean over examples of
    each example's mean −cos, computed without one small call per example.
    """
    if predicted.shape[0] != sum(counts) or targets.shape[0] != sum(counts) or not counts or min(counts) < 1:
        raise ValueError(f"align_loss_rows: {predicted.shape[0]} predictions, {targets.shape[0]} targets for counts {counts}")
    cos = (F.normalize(predicted, dim=-1) * F.normalize(targets.detach(), dim=-1)).sum(-1)
    n = torch.as_tensor(counts, device=cos.device)
    ids = torch.repeat_interleave(torch.arange(len(counts), device=cos.device), n)
    per = torch.zeros(len(counts), dtype=cos.dtype, device=cos.device).index_add(0, ids, cos) / n.to(cos.dtype)
    return -per.mean()


def align_weight(weight: float, alpha: float, drift: float) -> float:
    """λ3 · (1 + α · drift): alignment weighs more as the anchors drift (drift: the logged MMD(v_t, v_0), ≥ 0 used)."""
    return weight * (1.0 + alpha * max(0.0, drift))
