"""Which image region each visual token covers, for dashboards (attention overlays) and adapters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("grid", "spatial_conv", "spatial_pool")


@dataclass(frozen=True)
class TokenLayout:
    """Layout of one image's visual tokens, in the order the language model sees them.

    regions [tokens, 4] long: (row0, col0, row1, col1) in patches of the encoder grid, end-exclusive.
    kinds: per token, one of KINDS ("grid" = a pixel-unshuffle / compression token).
    """

    grid_hw: tuple[int, int]
    patch_size: int
    regions: torch.Tensor
    kinds: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.regions.ndim != 2 or self.regions.shape[1] != 4 or len(self.kinds) != self.regions.shape[0]:
            raise ValueError(f"TokenLayout: regions {tuple(self.regions.shape)} vs {len(self.kinds)} kinds")
        bad = set(self.kinds) - set(KINDS)
        if bad:
            raise ValueError(f"TokenLayout: unknown kinds {sorted(bad)}")

    def __len__(self) -> int:
        return len(self.kinds)

    def pixel_boxes(self) -> torch.Tensor:
        """[tokens, 4] (y0, x0, y1, x1) in pixels of the encoder input."""
        return self.regions * self.patch_size

    def coverage(self, kind: str = "grid") -> torch.Tensor:
        """[h, w] count of `kind` tokens covering each patch (grid tokens tile the image: all ones)."""
        cov = torch.zeros(self.grid_hw, dtype=torch.long)
        for (r0, c0, r1, c1), k in zip(self.regions.tolist(), self.kinds):
            if k == kind:
                cov[r0:r1, c0:c1] += 1
        return cov
