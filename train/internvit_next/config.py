"""Frozen config of InternViT-Next and the research plan's named variants A0..A5."""

from __future__ import annotations

from dataclasses import dataclass, replace

SPATIAL_MODES = ("none", "conv", "pool", "both")
SCORE_SOURCES = ("pixels", "features")


@dataclass(frozen=True)
class InternViTNextConfig:
    """Options layered on an InternVL vision tower; the defaults are A0 (vanilla InternViT).

    rope2d      2-D rotary embedding on every layer's q/k (Qwen2-VL/2.5-VL vision encoder).
    abs_pos     keep the learned absolute position embeddings (bicubic-interpolated to each grid);
                False removes them in favour of 2-D RoPE.
    window      k for attention inside k x k patch windows; 0 = full attention in every layer.
    full_layers layers that keep full attention when window > 0 (negative = from the end), as
                Qwen2.5-VL's `fullatt_block_indexes`.
    spatial     extra LLaVA-SP-style tokens: "conv" (n_spatial crop-conv tokens), "pool"
                (multi-scale pooled tokens at pool_scales), "both" or "none".
    keep_ratio  adaptive compression: fraction of InternVL's pixel-unshuffle tokens kept; 1.0 = off
                (the fixed 2x2 pixel unshuffle of InternVL).
    score_on    what the compression scorer measures detail on: "pixels" or "features".
    """

    name: str = "custom"
    rope2d: bool = False
    abs_pos: bool = True
    rope_theta: float = 10000.0
    window: int = 0
    full_layers: tuple[int, ...] = ()
    spatial: str = "none"
    n_spatial: int = 6
    pool_scales: tuple[int, ...] = (1, 2)
    keep_ratio: float = 1.0
    score_on: str = "pixels"

    def __post_init__(self) -> None:
        object.__setattr__(self, "full_layers", tuple(self.full_layers))
        object.__setattr__(self, "pool_scales", tuple(self.pool_scales))
        if not self.rope2d and not self.abs_pos:
            raise ValueError("InternViTNextConfig: needs rope2d or abs_pos, else patches carry no position")
        if not self.rope_theta > 0:
            raise ValueError(f"InternViTNextConfig.rope_theta must be > 0, got {self.rope_theta}")
        if self.window < 0 or self.window == 1:
            raise ValueError(f"InternViTNextConfig.window must be 0 (off) or >= 2, got {self.window}")
        if not all(isinstance(i, int) for i in self.full_layers):
            raise ValueError(f"InternViTNextConfig.full_layers must be ints, got {self.full_layers}")
        if self.full_layers and self.window == 0:
            raise ValueError("InternViTNextConfig.full_layers needs window > 0 (every layer is full already)")
        if self.spatial not in SPATIAL_MODES:
            raise ValueError(f"InternViTNextConfig.spatial must be one of {SPATIAL_MODES}, got {self.spatial!r}")
        if self.n_spatial < 1:
            raise ValueError(f"InternViTNextConfig.n_spatial must be >= 1, got {self.n_spatial}")
        if not self.pool_scales or any(not isinstance(s, int) or s < 1 for s in self.pool_scales):
            raise ValueError(f"InternViTNextConfig.pool_scales must be positive ints, got {self.pool_scales}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"InternViTNextConfig.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.score_on not in SCORE_SOURCES:
            raise ValueError(f"InternViTNextConfig.score_on must be one of {SCORE_SOURCES}, got {self.score_on!r}")

    def window_layer(self, i: int, num_layers: int) -> bool:
        """True when layer i attends within windows."""
        return self.window > 0 and i not in {j % num_layers for j in self.full_layers}

    @property
    def conv_tokens(self) -> int:
        """Number of crop-conv spatial tokens per image."""
        return self.n_spatial if self.spatial in ("conv", "both") else 0

    @property
    def pool_tokens(self) -> int:
        """Number of multi-scale pooled tokens per image."""
        return sum(s * s for s in self.pool_scales) if self.spatial in ("pool", "both") else 0


_A0 = InternViTNextConfig("A0")
_A1 = replace(_A0, name="A1", rope2d=True, abs_pos=False)
# window of 8 patches = 112 px at patch 14, as Qwen2.5-VL; the last layer stays global
_A2 = replace(_A1, name="A2", window=8, full_layers=(-1,))
VARIANTS: dict[str, InternViTNextConfig] = {
    "A0": _A0,
    "A1": _A1,
    "A2": _A2,
    "A3a": replace(_A2, name="A3a", spatial="conv"),
    "A3b": replace(_A2, name="A3b", spatial="pool"),
    "A3c": replace(_A2, name="A3c", spatial="both"),
    "A4": replace(_A2, name="A4", keep_ratio=0.5),
    "A5": replace(_A2, name="A5", spatial="both", keep_ratio=0.5),
}


def variant(name: str, **overrides: object) -> InternViTNextConfig:
    """The named variant (A0, A1, A2, A3a, A3b, A3c, A4, A5), optionally with fields replaced."""
    if name not in VARIANTS:
        raise KeyError(f"unknown InternViT-Next variant {name!r}; choose from {sorted(VARIANTS)}")
    return replace(VARIANTS[name], **overrides) if overrides else VARIANTS[name]
