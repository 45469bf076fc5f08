"""Hangul glyphs shipped to the page: the inline font holds exactly the page's non-ASCII characters (oracle: its cmap)."""

from __future__ import annotations

import base64
import io
import re

import synthetic as S
from apps.fonts import STREAMLIT_SANS, font_face
from probe.store import TraceStore

KO_PROMPT = ("USER", ":", " 이", " 도형은", " 무슨", " 색", "입니까", "?", " ASSIST", "ANT", ":", " 빨강", "\n")


def _fonts(style: str) -> list[tuple[str, set[int], str | None]]:
    """(family, code points the embedded font maps, unicode-range) per @font-face in ``style``."""
    from fontTools.ttLib import TTFont

    out = []
    for family, data, ranges in re.findall(r"@font-face\{font-family:'([^']+)';[^}]*?base64,([A-Za-z0-9+/=]+)\)[^}]*?"
                                           r"(?:unicode-range:([^}]+))?\}", style):
        out.append((family, set(TTFont(io.BytesIO(base64.b64decode(data))).getBestCmap()), ranges or None))
    return out


def test_font_holds_exactly_the_texts_hangul():
    text = "무슨 색? abc 무슨"
    style, family = font_face(text)
    faces = _fonts(style)
    assert [f[0] for f in faces] == [family, STREAMLIT_SANS]
    hangul = {ord(c) for c in "무슨색"}
    for _, cmap, _ in faces:
        assert hangul <= cmap and not ({ord(c) for c in "abc? "} & cmap)
    assert faces[1][2] == ",".join(f"U+{c:04X}" for c in sorted(hangul))  # Streamlit's font gains these characters only
    assert font_face("plain ASCII text") == ("", "")


def test_example_view_ships_the_tokens_hangul(app, tmp_path, monkeypatch):
    root = tmp_path / "root"
    S.write_store(root / "ko.zarr", 4, keys=False, eval_group=False, prompt=KO_PROMPT)
    monkeypatch.setenv("VISBLIND_DASHBOARD_ROOT", str(root))
    at = app(before="ko.zarr", view="example")
    at.run()
    assert not at.exception, at.exception
    (chips,) = [m.value for m in at.markdown if "@font-face" in m.value]
    family = re.search(r"font-family:monospace,([\w-]+)'", chips).group(1)
    faces = _fonts(chips)
    assert faces[0][0] == family
    ds = TraceStore.open(root / "ko.zarr").dataset.sel(example="ex0")  # the example shown first
    shown = [str(t) for t, s in zip(ds["token"].values, ds["segment_ids"].values) if s > 0]
    hangul = {ord(c) for word in shown for c in word if 0xAC00 <= ord(c) <= 0xD7A3}
    assert len(hangul) >= 5 and hangul <= faces[0][1]
