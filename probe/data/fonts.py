"""A Hangul-capable font shipped by a PyPI package (cvttf-notosanscjk-regular: Noto Sans CJK)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont


class FontNotFoundError(RuntimeError):
    """No Hangul-capable font is installed."""


def hangul_font_path() -> Path:
    """Path of an installed font that renders Hangul and Latin (Noto Sans CJK, else Debian Nanum)."""
    try:
        import cvttf_NotoSansCJK_Regular as pkg

        return Path(pkg.get_TTF_path())
    except (ImportError, FileNotFoundError):
        pass
    for candidate in ("/usr/share/fonts/truetype/nanum/NanumGothic.ttf",):
        if Path(candidate).is_file():
            return Path(candidate)
    raise FontNotFoundError("no Hangul font: `pip install cvttf-notosanscjk-regular` (or apt install fonts-nanum)")


@lru_cache(maxsize=16)
def hangul_font(size: int) -> ImageFont.FreeTypeFont:
    """The Hangul font at `size` pixels."""
    return ImageFont.truetype(str(hangul_font_path()), size)
