"""One visual-QA example as it reaches an adapter and a store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Example:
    """An (image, prompt, optional answer) triple with its labels.

    `image` is a path (loaded lazily by `load_image`) or an already-open PIL image;
    `condition` names the image condition (real, blank, mismatched, ...); `group` names the
    independent unit for resampling (None: the image path, so one image asked in two languages is one unit).
    """

    id: str
    image: str | Path | Image.Image | None
    prompt: str
    answer: str | None = None
    lang: str = "en"
    condition: str = "real"
    question_type: str = "unknown"
    image_dependent: bool | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    group: str | None = None

    @property
    def needs_image(self) -> bool:
        """`image_dependent`, a missing flag (None) counting as image-dependent: the one reading of it (docs/manifest.md)."""
        return self.image_dependent is not False
