"""Content-aware token compression to a fixed budget: detailed 2x2 blocks keep 4 tokens, flat ones merge to 1."""
from __future__ import annotations

import torch


def compress_tokens(grid: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w, D) features -> (budget, D) tokens and (budget, 4) regions (r0, c0, r1, c1) in patches, end-exclusive.

    Score = within-block feature variance (detail/text is high, flat regions low); the highest-scoring blocks
    are kept at full resolution, the rest merged by mean; leftover slots (< 3) get the global mean token.
    """
    h, w, d = grid.shape
    if h % 2 or w % 2:
        raise ValueError(f"compress_tokens: grid {h}x{w} must be even on both sides")
    nb = (h // 2) * (w // 2)
    if not nb <= budget <= h * w:
        raise ValueError(f"compress_tokens: budget {budget} outside [{nb}, {h * w}] for grid {h}x{w}")
    blocks = grid.reshape(h // 2, 2, w // 2, 2, d).permute(0, 2, 1, 3, 4).reshape(nb, 4, d)
    score = blocks.var(dim=1, unbiased=False).mean(-1)
    m = (budget - nb) // 3
    keep = torch.zeros(nb, dtype=torch.bool)
    keep[score.topk(m).indices] = True
    toks, regs = [], []
    for b in range(nb):
        r, c = 2 * (b // (w // 2)), 2 * (b % (w // 2))
        if keep[b]:
            toks.extend(blocks[b])
            regs.extend([(r + i // 2, c + i % 2, r + i // 2 + 1, c + i % 2 + 1) for i in range(4)])
        else:
            toks.append(blocks[b].mean(0))
            regs.append((r, c, r + 2, c + 2))
    for _ in range(budget - len(toks)):
        toks.append(grid.mean(dim=(0, 1)))
        regs.append((0, 0, h, w))
    return torch.stack(toks), torch.tensor(regs)
