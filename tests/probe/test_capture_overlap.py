"""The store write of batch k runs while batch k+1 computes; errors and interrupts keep the store's rules.

Oracles: the order of events (a forward starts while the previous batch's append is still running, which a
serial loop can never do); the store equals a serial capture's exactly; an append that fails raises that error
from `capture` and a rerun completes the store to the serial one, bit for bit.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from probe.capture import Capture, CaptureSpec, capture
from probe.capture.overlap import Behind
from probe.capture.session import to_host
from probe.data.manifest import read_manifest
from probe.store import TraceStore
from probe.store import writer as store_writer

SPEC = CaptureSpec(resid=("pooled",), attn_pattern=True, dtype="float32", batch_size=2)


@pytest.fixture(scope="module")
def examples(colour_manifest):
    return read_manifest(colour_manifest)


def _same_store(a: TraceStore, b: TraceStore) -> None:
    da, db = (s.dataset() if callable(s.dataset) else s.dataset for s in (a, b))
    assert list(da["example"].values) == list(db["example"].values)
    for name in da.data_vars:
        np.testing.assert_array_equal(np.asarray(da[name].values), np.asarray(db[name].values), err_msg=name)


def _serial(adapter, examples, out, monkeypatch):
    """The reference: every job of the writer thread run at once, in the loop (the old serial order)."""
    monkeypatch.setattr(Behind, "submit", lambda self, job: job())
    store = capture(adapter, examples, out, SPEC, progress=False)
    monkeypatch.undo()
    return store


def test_write_overlaps_next_forward(tiny_llava_adapter, examples, tmp_path, monkeypatch):
    events: list[str] = []
    append = store_writer.TraceStoreWriter.append

    def slow_append(self, ids, *a, **k):
        events.append(f"append start {ids[0]}")
        time.sleep(0.4)
        append(self, ids, *a, **k)
        events.append(f"append end {ids[0]}")

    monkeypatch.setattr(store_writer.TraceStoreWriter, "append", slow_append)
    model = tiny_llava_adapter.model
    handle = model.register_forward_pre_hook(lambda *a: events.append("forward"))
    try:
        got = capture(tiny_llava_adapter, examples, tmp_path / "overlapped", SPEC, progress=False)
    finally:
        handle.remove()
    monkeypatch.undo()
    # some forward starts between an append's start and its end: the write ran while the next batch computed
    inside = [i for i, e in enumerate(events) if e == "forward" and any(
        events[j].startswith("append start") and not any(events[m].startswith("append end") for m in range(j, i))
        for j in range(i))]
    assert inside, events
    _same_store(got, _serial(tiny_llava_adapter, examples, tmp_path / "serial", monkeypatch))


def test_failed_append_raises_and_resumes_bit_identical(tiny_llava_adapter, examples, tmp_path, monkeypatch):
    append = store_writer.TraceStoreWriter.append
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        append(self, *a, **k)

    monkeypatch.setattr(store_writer.TraceStoreWriter, "append", failing)
    with pytest.raises(OSError, match="disk full"):
        capture(tiny_llava_adapter, examples, tmp_path / "store", SPEC, progress=False)
    monkeypatch.undo()
    resumed = capture(tiny_llava_adapter, examples, tmp_path / "store", SPEC, progress=False)
    _same_store(resumed, _serial(tiny_llava_adapter, examples, tmp_path / "serial", monkeypatch))


def test_behind_runs_in_order_and_stops_after_an_error():
    done: list[int] = []
    gate = threading.Event()
    with Behind() as behind:
        behind.submit(lambda: gate.wait(5) and done.append(0))
        behind.submit(lambda: done.append(1))
        gate.set()
    assert done == [0, 1]
    behind = Behind()

    def boom():
        raise ValueError("in the writer thread")

    behind.submit(boom)
    time.sleep(0.2)
    with pytest.raises(ValueError, match="writer thread"):
        behind.submit(lambda: done.append(2))
    behind.stop()
    assert done == [0, 1]


def test_gathered_rows_equal_collect(tiny_llava_adapter, examples):
    """gather + rows (the writer thread's path) gives what collect gives; to_host keeps CPU tensors as they are."""
    cap = Capture(tiny_llava_adapter, SPEC)
    batch = tiny_llava_adapter.build_inputs(examples[:3], padding_side="right")
    first = cap.run(batch)
    again = cap.run(batch)
    for a, b in zip(first, again):
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    t = np.arange(6.0)
    import torch

    moved, ready = to_host([torch.as_tensor(t)])
    assert ready == [] and np.array_equal(moved[0].numpy(), t)
