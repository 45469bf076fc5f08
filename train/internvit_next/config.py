"""Frozen config and named variants A0..A5 for InternViT-Next."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InternViTNextConfig:
    """Encoder options layered on top of an InternVL vision config."""

    name: str = "A0"
    window: int = 0  # k for k x k patch windows; 0 = full attention everywhere
    full_layers: tuple[int, ...] = ()  # layers that stay global when window > 0; -1 = last
    rope2d: bool = False
    keep_abs_pos: bool = True  # keep (and interpolate) learned abs pos-embeddings
    native_resolution: bool = False  # any H x W (multiple of patch) instead of square only

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ValueError(f"InternViTNextConfig.window must be >= 0, got {self.window}")
        if not all(isinstance(i, int) for i in self.full_layers):
            raise ValueError(f"InternViTNextConfig.full_layers must be ints (negative = from end), got {self.full_layers}")
        if not self.rope2d and not self.keep_abs_pos:
            raise ValueError("InternViTNextConfig: needs rope2d or keep_abs_pos for position information")

    def is_window_layer(self, i: int, num_layers: int) -> bool:
        """True when layer i uses window attention."""
        full = {j % num_layers for j in self.full_layers}
        return self.window > 0 and i not in full


VARIANTS: dict[str, InternViTNextConfig] = {
    "A0": InternViTNextConfig("A0"),
    "A1": InternViTNextConfig("A1", native_resolution=True),
    "A2": InternViTNextConfig("A2", window=4, full_layers=(-1,), native_resolution=True),
    "A3": InternViTNextConfig("A3", rope2d=True, keep_abs_pos=False, native_resolution=True),
    "A4": InternViTNextConfig("A4", window=4, full_layers=(-1,), rope2d=True, keep_abs_pos=False,
                              native_resolution=True),
    "A5": InternViTNextConfig("A5", window=4, full_layers=(-1,), rope2d=True, keep_abs_pos=True,
                              native_resolution=True),
}


def variant(name: str) -> InternViTNextConfig:
    """Return the named variant config."""
    if name not in VARIANTS:
        raise KeyError(f"unknown InternViT-Next variant {name!r}; choose from {sorted(VARIANTS)}")
    return VARIANTS[name]
