"""Building a processor without torchvision: its (unused) video slot is let through empty."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def allow_missing_video_processor() -> Iterator[None]:
    """Let a processor be built with video_processor=None when torchvision is absent.

    transformers 5.x video processors need torchvision, and ProcessorMixin's class check of the (unused)
    video slot crashes without it; images-only use does not touch the video processor.
    """
    import importlib.util

    from transformers.processing_utils import ProcessorMixin

    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return original(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original
