"""Paint per-visual-token values back onto the image from the store's token layout (boxes in original pixels).

Used by the HTML report's example pictures and the dashboard's example view (apps.paint re-exports it).
"""

from __future__ import annotations

import numpy as np


def display_size(image_size: tuple[int, int], max_side: int = 384) -> tuple[int, int, float]:
    """(height, width, scale) of the drawing: the image scaled so its longer side is ``max_side`` pixels."""
    h, w = int(image_size[0]), int(image_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale)), scale


def paint(values: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], max_side: int = 384,
          keep: np.ndarray | None = None) -> np.ndarray:
    """Raster [height, width] (display size) where each pixel holds the sum of ``values`` of the tokens whose box covers it.

    values: [n] per visual token; boxes: [n, 4] (x0, y0, x1, y1) in original-image pixels; ``keep``: [n] bool,
    tokens to paint (e.g. one tile). Overlapping tiles (a thumbnail beside high-resolution tiles) add up, so
    paint one tile at a time to read a tile on its own. A pixel is covered when its centre lies in the box.
    """
    values = np.asarray(values, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(values), 4):
        raise ValueError(f"paint: boxes shape {boxes.shape} does not match {len(values)} values")
    h, w, scale = display_size(image_size, max_side)
    out = np.zeros((h, w))
    centres_x, centres_y = (np.arange(w) + 0.5) / scale, (np.arange(h) + 0.5) / scale
    for i in np.flatnonzero(np.ones(len(values), bool) if keep is None else keep):
        v = values[i]
        if not np.isfinite(v) or not np.isfinite(boxes[i]).all():
            continue
        x0, y0, x1, y1 = boxes[i]
        cols = (centres_x >= x0) & (centres_x < x1)
        rows = (centres_y >= y0) & (centres_y < y1)
        out[np.ix_(rows, cols)] += v
    return out
