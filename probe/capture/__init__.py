"""Capture: what to record (CaptureSpec), how (attention recorder, nnsight taps) and the loop."""

from probe.capture.spec import CaptureSpec

__all__ = ["CaptureSpec", "Capture", "capture"]


def __getattr__(name: str):
    # the loop pulls in nnsight, zarr and the store: import it only when asked
    if name == "capture":
        from probe.capture.run import capture

        return capture
    if name == "Capture":
        from probe.capture.session import Capture

        return Capture
    raise AttributeError(name)
