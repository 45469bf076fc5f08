"""Where each visual token came from: its tile, its place in the tile's token grid, and its box in the original image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# the sites whose rows are visual features (vision tower output, projector input and output)
VISUAL_SITES: tuple[str, ...] = ("vision.out", "projector.in", "projector.out")

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original-image pixels


@dataclass(frozen=True)
class VisualLayout:
    """One example's VISUAL positions, in sequence order.

    tile [n] int32: the tile the token came from, numbered in the order the processor emits tiles (the
        example's pixel_values order: e.g. LLaVA-NeXT's base tile first, InternVL's thumbnail last);
    row, col [n] int32: its place in that tile's token grid after pixel-shuffle / patch-merge (-1 for a
        token with no place, e.g. a CLS token);
    box [n, 4] float32: x0, y0, x1, y1 of the token's region in original-image pixels (clipped to the image);
    tile_box [n, 4] float32: the region of its tile in original-image pixels (clipped);
    image_size: the original image's (height, width).

    A token blended from several patches across tiles (LLaVA-OneVision's shrunk grid) is placed at the patch
    under its box centre; its box may then overhang that tile.
    """

    tile: np.ndarray
    row: np.ndarray
    col: np.ndarray
    box: np.ndarray
    tile_box: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.tile)
        for name in ("tile", "row", "col"):
            value = getattr(self, name)
            if value.dtype != np.int32 or value.shape != (n,):
                raise ValueError(f"VisualLayout.{name}: expected int32 [{n}], got {value.dtype} {list(value.shape)}")
        for name in ("box", "tile_box"):
            value = getattr(self, name)
            if value.dtype != np.float32 or value.shape != (n, 4):
                raise ValueError(f"VisualLayout.{name}: expected float32 [{n}, 4], got {value.dtype} {list(value.shape)}")
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"VisualLayout.image_size: expected (height, width) > 0, got {self.image_size}")

    def __len__(self) -> int:
        return len(self.tile)

    @classmethod
    def concat(cls, parts: Sequence["VisualLayout"]) -> "VisualLayout":
        """Parts of one image's layout, one after another in sequence order."""
        if not parts:
            raise ValueError("VisualLayout.concat: no parts")
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("tile", "row", "col", "box", "tile_box")),
                   image_size=parts[0].image_size)


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Boxes [n, 4] (x0, y0, x1, y1) clipped to an image of (height, width)."""
    height, width = image_size
    out = np.asarray(boxes, dtype=np.float64).copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out.astype(np.float32)


def grid_layout(tile: int, tile_box: Box, rows: int, cols: int, image_size: tuple[int, int]) -> VisualLayout:
    """A tile whose rows x cols tokens (row-major) evenly divide `tile_box` (original pixels, may overhang the image)."""
    x0, y0, x1, y1 = tile_box
    r, c = np.divmod(np.arange(rows * cols), cols)
    w, h = (x1 - x0) / cols, (y1 - y0) / rows
    boxes = np.stack([x0 + c * w, y0 + r * h, x0 + (c + 1) * w, y0 + (r + 1) * h], axis=1)
    n = rows * cols
    return VisualLayout(
        tile=np.full(n, tile, np.int32), row=r.astype(np.int32), col=c.astype(np.int32),
        box=clip_boxes(boxes, image_size), tile_box=clip_boxes(np.tile(np.asarray(tile_box, np.float64), (n, 1)), image_size),
        image_size=(int(image_size[0]), int(image_size[1])),
    )


def grid_tiles(rows: int, cols: int, image_size: tuple[int, int]) -> list[Box]:
    """Boxes of a rows x cols tiling of the whole image (the image stretched onto the grid), row-major."""
    height, width = image_size
    return [(c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows)
            for r in range(rows) for c in range(cols)]
