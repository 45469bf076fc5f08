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


# Streamlit's own text font (streamlit/static: genericFonts.sansSerif; its tables draw on a canvas with it) and the
# descriptors of its @font-face: a face joins that family for some characters only when its descriptors are the same
STREAMLIT_SANS = "Source Sans"
STREAMLIT_SANS_DESCRIPTORS = "font-weight:100 900;font-style:normal"


def font_face(text: str) -> tuple[str, str]:
    """(a <style> declaring a font family with the glyphs of `text`'s non-ASCII characters, that family's CSS name);
    ("", "") when `text` needs none or the font is not installed. Put the family after the page's own fonts.

    The same glyphs are also added to Streamlit's text font for exactly these characters (unicode-range), so that
    Streamlit's own elements (tables, drawn on a canvas) show them too.
    """
    chars = "".join(sorted({c for c in text if ord(c) in _covered()}))
    if not chars:
        return "", ""
    family = f"visblind-cjk-{hashlib.sha1(chars.encode()).hexdigest()[:10]}"
    src = f"src:url(data:font/woff;base64,{_woff(chars)}) format('woff')"
    ranges = ",".join(f"U+{ord(c):04X}" for c in chars)
    style = (f"<style>@font-face{{font-family:'{family}';{src}}}"
             f"@font-face{{font-family:'{STREAMLIT_SANS}';{STREAMLIT_SANS_DESCRIPTORS};{src};unicode-range:{ranges}}}</style>")
    return style, family  # a plain CSS identifier: usable unquoted inside a quoted HTML attribute
