"""Compatibility alias: the hand-built tiny models live in `probe.testing.hand_built`."""

from probe.testing.hand_built import *  # noqa: F401,F403
from probe.testing.hand_built import _TEXT  # noqa: F401
