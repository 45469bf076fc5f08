"""Interventions compose with probe's Capture: the edited forward pass is the measured one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions import ComponentSwap, Knockout
from probe.capture import Capture, CaptureSpec
from probe.segments import Segment

VISUAL = int(Segment.VISUAL)


def _record(cap, batch, *interventions, edits_first: bool = False):
    from contextlib import ExitStack

    with torch.no_grad(), ExitStack() as stack:
        if not edits_first:
            stack.enter_context(cap.recording(batch))
        for iv in interventions:
            iv.set_batch(batch)
            stack.enter_context(iv)
        if edits_first:  # the recorder is attached outermost: it still sees the edited attention
            stack.enter_context(cap.recording(batch))
        with cap.envoy.trace(**batch.inputs):
            saved = cap.tap(batch)
        return cap.collect(batch, saved)


@pytest.mark.parametrize("edits_first", [False, True], ids=["capture-entered-first", "edit-entered-first"])
def test_knockout_is_what_capture_records(pair, batch, edits_first):
    adapter = pair[0]
    spec = CaptureSpec(layers=(0, 1), resid=(), projector=False, dtype="float32")
    cap = Capture(adapter, spec)
    plain = _record(cap, batch)
    knocked = _record(cap, batch, Knockout(adapter, layers=(1,), queries=("last_prompt",)), edits_first=edits_first)
    for before, after in zip(plain, knocked):
        share_before = before["attn_share"][:, :, 0, VISUAL]  # [layer, head], source last_prompt
        share_after = after["attn_share"][:, :, 0, VISUAL]
        assert np.all(share_before > 0.01)
        np.testing.assert_allclose(share_after[1], 0.0, atol=1e-6)
        np.testing.assert_allclose(share_after[0], share_before[0], atol=1e-6)  # layer 0 untouched


def test_swap_under_capture_records_the_donor(pair, batch):
    recipient, donor = pair
    spec = CaptureSpec(layers=(2,), resid=("query",), projector=True, dtype="float32")
    theirs = _record(Capture(donor, spec), batch)
    swapped = _record(Capture(recipient, spec), batch, ComponentSwap(recipient, donor, "all"))
    for a, b in zip(theirs, swapped):
        for name in ("attn_share", "hook_resid_post", "projector_out"):
            np.testing.assert_array_equal(a[name], b[name])
