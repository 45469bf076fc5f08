"""Fixtures over the tiny hand-fed VLMs of probe.testing.hand_built."""

from __future__ import annotations

import pytest
from probe.testing.hand_built import TinyVLM, build_tiny, make_batch


@pytest.fixture(scope="session")
def tiny_factory():
    """Build each tiny family once per session."""
    cache: dict[tuple[str, int | None], TinyVLM] = {}

    def get(family: str, sliding_window: int | None = None) -> TinyVLM:
        if (family, sliding_window) not in cache:
            cache[(family, sliding_window)] = build_tiny(family, sliding_window=sliding_window)
        return cache[(family, sliding_window)]

    return get


@pytest.fixture(scope="session")
def batch_factory():
    """`make_batch(tiny, padding_side, layout)` as a fixture."""
    return make_batch
