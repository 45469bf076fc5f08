"""Open-ended answer matching: case, punctuation, Unicode form and (Korean) a trailing copula or particle."""

from __future__ import annotations

import re
import unicodedata

_EDGE = re.compile(r"^[\W_]+|[\W_]+$")  # punctuation / symbols / spaces at either end
_SPACES = re.compile(r"\s+")
# Endings a Korean short answer may carry after the bare noun: copula forms (입니다, 이에요/예요, 이다/다,
# 이야/야, 이요/요) and subject / topic / object particles. Matched only as the remainder after the whole
# reference answer, never stripped on their own, so a word that merely ends in one (바다, 사과) is safe.
KOREAN_ENDINGS: frozenset[str] = frozenset({
    "입니다", "이에요", "예요", "이다", "다", "이야", "야", "이요", "요",
    "은", "는", "이", "가", "을", "를",
})


def normalise(text: str) -> str:
    """Canonical short answer: NFC, lower case, inner spaces collapsed, punctuation trimmed from both ends."""
    text = unicodedata.normalize("NFC", text).strip().lower()
    return _SPACES.sub(" ", _EDGE.sub("", text))


def answers_match(prediction: str, reference: str, lang: str = "en") -> bool:
    """Open-ended match: equal after `normalise`; in Korean also the reference plus one of `KOREAN_ENDINGS`.

    '직사각형입니다.' matches '직사각형'; '바' does not match '바다' (nothing is stripped from the reference).
    """
    pred, ref = normalise(prediction), normalise(reference)
    if pred == ref:
        return True
    if lang.lower().startswith("ko") and ref and pred.startswith(ref):
        return pred[len(ref):].strip() in KOREAN_ENDINGS
    return False
