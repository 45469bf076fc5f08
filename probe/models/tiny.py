"""Compatibility alias: the tiny test-model builders live in `probe.testing` (import them from there)."""

from probe.testing.families import *  # noqa: F401,F403
from probe.testing.families import _allow_missing_video_processor, _anyres_pinpoints, _text_kwargs, _video_processor  # noqa: F401
