"""visblind probe: model adapters, capture into TraceStores, evaluation, analyses and reports.

    from probe import load_model, CaptureSpec, TraceStore
    from probe.capture import capture
    store = capture(load_model("./ckpt"), "manifest.jsonl", "base.zarr", CaptureSpec(keys=True))
"""

from probe.capture import CaptureSpec
from probe.data.example import Example
from probe.segments import Segment

__all__ = ["CaptureSpec", "Example", "Segment", "TraceStore", "load_model", "read_manifest"]


def __getattr__(name: str):
    # heavy pieces (transformers, nnsight, zarr) load on first use
    if name == "load_model":
        from probe.models.loading import load_model

        return load_model
    if name == "TraceStore":
        from probe.store import TraceStore

        return TraceStore
    if name == "read_manifest":
        from probe.data.manifest import read_manifest

        return read_manifest
    raise AttributeError(f"module 'probe' has no attribute {name!r}")
