"""Adapter methods for partial forwards and component changes (probe.models.surgery), on every tiny family.

Oracles: the decoder's own input at VISUAL positions (read by a hook in a full forward), and the model's
forward with the component untouched.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.segments import Segment

FAMILIES = ["llava", "internvl", "qwen2_vl", "smolvlm", "internvl-tiled", "llava_next", "llava_onevision", "gemma3",
            "qwen3_vl"]


def _batch(adapter):
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 48), (64, 30)]]
    return adapter.build_inputs([Example("a", ims[0], "What is it?"), Example("b", ims[1], "색은?")], "right")


def _decoder_input(adapter, batch) -> torch.Tensor:
    seen = {}

    def grab(_m, args, kwargs):
        seen.setdefault("x", (args[0] if args else kwargs["hidden_states"]).clone())

    handle = adapter.decoder_layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**batch.inputs)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_tokens_are_the_decoders_visual_inputs_in_order(tiny_adapter, family):
    adapter = tiny_adapter(family)
    batch = _batch(adapter)
    hidden = _decoder_input(adapter, batch)
    ran = []
    handle = adapter.decoder_layers[0].register_forward_pre_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad():
            rows = adapter.visual_tokens(batch)
    finally:
        handle.remove()
    assert not ran  # the decoder never ran
    for r, got in enumerate(rows):
        want = hidden[r][batch.segments[r] == int(Segment.VISUAL)]
        torch.testing.assert_close(got.to(want.dtype), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_site_is_declared_and_is_the_layers_mlp_output(tiny_adapter, family):
    adapter = tiny_adapter(family)
    assert "lm.layer.{i}.mlp" in adapter.sites
    mlp = adapter.module("lm.layer.{i}.mlp", 1)
    layer = adapter.component("lm.layer.1")
    assert any(m is mlp for m in layer.modules()) and mlp is not adapter.module("lm.layer.{i}.attn", 1)
    out = {}
    handle = mlp.register_forward_hook(lambda _m, _a, o: out.setdefault("y", o))
    try:
        batch = _batch(adapter)
        with torch.no_grad():
            adapter.model(**batch.inputs)
    finally:
        handle.remove()
    assert out["y"].shape[:2] == batch.segments.shape and out["y"].shape[-1] == adapter.hidden_size


def test_replaced_component_changes_the_forward_and_is_restored(tiny_adapter):
    adapter = tiny_adapter("llava")
    batch = _batch(adapter)
    live = adapter.component("vision")
    with torch.no_grad():
        before = adapter.projector_input(batch)
        other = copy.deepcopy(live)
        for p in other.parameters():
            p.add_(0.5)
        with adapter.replaced_component("vision", other):
            assert adapter.component("vision") is other
            changed = adapter.projector_input(batch)
        with pytest.raises(RuntimeError, match="boom"), adapter.replaced_component("vision", other):
            raise RuntimeError("boom")
        after = adapter.projector_input(batch)
    assert adapter.component("vision") is live
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
