"""Hangul (and other CJK) glyphs for text the dashboard draws as HTML: an inline @font-face holding only the characters
shown, cut from the Noto Sans CJK font the project installs (a browser without a CJK system font, such as Debian's
headless chromium, would draw boxes). A few kB per page instead of the 16 MB font."""

from __future__ import annotations

import base64
import hashlib
import io
from functools import lru_cache

from probe.data.fonts import FontNotFoundError, hangul_font_path


@lru_cache(maxsize=1)
def _covered() -> frozenset[int]:
    """Code points above ASCII that the font draws (empty without the font)."""
    from fontTools.ttLib import TTFont

    try:
        return frozenset(c for c in TTFont(str(hangul_font_path()), lazy=True).getBestCmap() if c > 0x7F)
    except FontNotFoundError:
        return frozenset()


@lru_cache(maxsize=64)
def _woff(chars: str) -> str:
    """The font cut to `chars`, as base64 WOFF."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(str(hangul_font_path()), lazy=True)
    opts = subset.Options()
    opts.hinting, opts.desubroutinize, opts.flavor = False, True, "woff"
    sub = subset.Subsetter(opts)
    sub.populate(text=chars)
    sub.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    return base64.b64encode(buf.getvalue()).decode()


def font_face(text: str) -> tuple[str, str]:
    """(a <style> declaring a font family with the glyphs of `text`'s non-ASCII characters, that family's CSS name);
    ("", "") when `text` needs none or the font is not installed. Put the family after the page's own fonts."""
    chars = "".join(sorted({c for c in text if ord(c) in _covered()}))
    if not chars:
        return "", ""
    family = f"visblind-cjk-{hashlib.sha1(chars.encode()).hexdigest()[:10]}"
    style = f"<style>@font-face{{font-family:'{family}';src:url(data:font/woff;base64,{_woff(chars)}) format('woff')}}</style>"
    return style, f"'{family}'"
