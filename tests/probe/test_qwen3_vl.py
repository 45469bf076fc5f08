"""Qwen3 decoders: Qwen3-VL's DeepStack injections as visual rows, and LLaVA-OneVision on a Qwen3 LM (VARCO-VISION-2.0).

Oracles: the decoder's own residual stream (what a DeepStack merger adds is the jump between decoder layer j's
output and layer j+1's input at the VISUAL positions); the model's own k_proj -> k_norm -> RoPE for post-RoPE
keys; eager attention for shares.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from probe.capture.attention import AttentionRecorder
from probe.data.example import Example
from probe.models.llava import LlavaAdapter
from probe.models.registry import adapter_class
from probe.segments import Segment
from probe.testing.hand_built import forward_with_hooks


def _examples() -> list[Example]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (64, 30))]
    return [Example("a", images[0], "What color is it?", answer="red"),
            Example("b", images[1], "이 그림에 무엇이 보입니까?", lang="ko")]


def _run(adapter, batch, deepstack_layers):
    """Forward; the DeepStack site's main tensor at each of `deepstack_layers`, and every decoder layer's input and output."""
    seen, layer_in, layer_out = {}, {}, {}
    site = "deepstack.{i}"
    hooks = [adapter.module(site, j).register_forward_hook(
        lambda m, i, o, j=j: seen.__setitem__(j, adapter.site_tensor(site, o))) for j in deepstack_layers]
    for j, layer in enumerate(adapter.decoder_layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, k, j=j: layer_in.__setitem__(j, adapter.site_tensor("lm.layer.{i}.resid", (a, k))), with_kwargs=True))
        hooks.append(layer.register_forward_hook(lambda m, i, o, j=j: layer_out.__setitem__(j, adapter.site_tensor("", o))))
    forward_with_hooks(adapter.model, batch.inputs, hooks)
    return seen, layer_in, layer_out


@pytest.mark.parametrize("padding", ["left", "right"])
def test_deepstack_rows_are_what_the_decoder_adds(tiny_adapter, padding):
    adapter = tiny_adapter("qwen3_vl")
    site = "deepstack.{i}"
    assert adapter.site_layers(site) == adapter.deepstack_layers == [0, 1] and adapter.num_layers == 3
    assert adapter.site_layers("lm.layer.{i}.resid") == [0, 1, 2]
    batch = adapter.build_inputs(_examples(), padding)
    counts = adapter.visual_row_counts(batch)
    assert counts[site] == counts["projector.out"] == adapter.n_visual_tokens(batch.segments).tolist()
    seen, layer_in, layer_out = _run(adapter, batch, adapter.deepstack_layers)
    for j in adapter.deepstack_layers:
        rows = adapter.visual_rows(site, seen[j], batch)
        assert [len(r) for r in rows] == counts[site]
        for b in range(2):
            pos = adapter.visual_positions(batch.segments, b)
            added = layer_in[j + 1][b, pos] - layer_out[j][b, pos]
            torch.testing.assert_close(rows[b], added, atol=1e-5, rtol=1e-5)
            assert float(rows[b].abs().max()) > 0.01  # a real injection, 1000x the tolerance
            # nothing is added at text positions
            text = (batch.segments[b] == Segment.TEXT).nonzero().flatten()
            torch.testing.assert_close(layer_in[j + 1][b, text], layer_out[j][b, text], atol=0, rtol=0)
    assert adapter.component_parameters("deepstack") and all(
        n.startswith("model.visual.deepstack_merger_list.") for n in adapter.component_parameters("deepstack"))


def test_capture_stores_deepstack_rows_per_layer(tiny_adapter, tmp_path):
    """Store variable deepstack_out (layer, vtoken, feature): the residual jump at layers 0, 1; NaN at layer 2.

    With the vision tower tapped too: DeepStack mergers run between vision blocks, out of declaration order."""
    from probe.capture.run import capture
    from probe.capture.spec import CaptureSpec

    adapter = tiny_adapter("qwen3_vl")
    examples = _examples()
    store = capture(adapter, examples, tmp_path / "q.zarr", CaptureSpec(dtype="float32", batch_size=2, vision=True), progress=False)
    ds = store.dataset
    var = ds["deepstack_out"]
    assert var.dims == ("example", "layer", "vtoken", "feature") and ds["layer"].values.tolist() == [0, 1, 2]
    for e, ex in enumerate(examples):
        batch = adapter.build_inputs([ex])
        _, layer_in, layer_out = _run(adapter, batch, [])
        pos = adapter.visual_positions(batch.segments, 0)
        n = len(pos)
        got = torch.from_numpy(var.isel(example=e).values)
        for j in (0, 1):
            torch.testing.assert_close(got[j, :n], layer_in[j + 1][0, pos] - layer_out[j][0, pos], atol=1e-5, rtol=1e-5)
        assert got[2].isnan().all() and got[:, n:].isnan().all()
        # projector_out holds the merger rows on the same vtoken axis
        assert not np.isnan(ds["projector_out"].isel(example=e).values[:n]).any()


def test_other_families_store_no_deepstack(tiny_adapter, tmp_path):
    from probe.capture.run import capture
    from probe.capture.spec import CaptureSpec

    store = capture(tiny_adapter("qwen2_vl"), _examples()[:1], tmp_path / "l.zarr", CaptureSpec(dtype="float32"),
                    progress=False)
    assert "deepstack_out" not in store.dataset and "projector_out" in store.dataset


def test_qwen3_vl_recorder_keys_match_own_rope(tiny_adapter):
    """Interleaved M-RoPE with QK-norm: recorded post-RoPE keys == k_proj -> k_norm -> the model's RoPE."""
    _keys_match_own_rope(tiny_adapter("qwen3_vl"))


def test_onevision_serves_a_qwen3_backbone(tiny_adapter):
    """VARCO-VISION-2.0 is LLaVA-OneVision (SigLIP, anyres_max_9) on a Qwen3 LM: the LLaVA adapter serves it."""
    varco = SimpleNamespace(model_type="llava_onevision", text_config=SimpleNamespace(model_type="qwen3"))
    assert adapter_class(varco) is LlavaAdapter
    adapter = tiny_adapter("llava_onevision")
    assert isinstance(adapter, LlavaAdapter)
    assert adapter.text_config.model_type == "qwen3"
    assert type(adapter.attention_modules[0]).__name__ == "Qwen3Attention"
    assert hasattr(adapter.attention_modules[0], "k_norm")  # Qwen3's QK-norm sits before RoPE
    _keys_match_own_rope(adapter)


def _keys_match_own_rope(adapter):
    batch = adapter.build_inputs(_examples(), "left")
    taps, hooks = {}, []
    for i, attn in enumerate(adapter.attention_modules):
        hooks.append(attn.register_forward_pre_hook(
            lambda m, a, k, i=i: taps.setdefault(i, {}).__setitem__("pe", k["position_embeddings"]), with_kwargs=True))
        hooks.append(attn.k_norm.register_forward_hook(lambda m, a, o, i=i: taps.setdefault(i, {}).__setitem__("k", o)))
        hooks.append(attn.q_norm.register_forward_hook(lambda m, a, o, i=i: taps.setdefault(i, {}).__setitem__("q", o)))
    rec = AttentionRecorder(adapter.attention_modules, list(range(adapter.num_layers)), keys=True, queries=True)
    rec.set_batch(batch.segments)
    try:
        with rec, torch.no_grad():
            adapter.model(**batch.inputs)
    finally:
        for h in hooks:
            h.remove()
    rope = sys.modules[type(adapter.attention_modules[0]).__module__].apply_rotary_pos_emb
    real = (batch.segments != Segment.PAD)[:, None, :, None]
    for i in range(adapter.num_layers):
        q, k = rope(taps[i]["q"].transpose(1, 2), taps[i]["k"].transpose(1, 2), *taps[i]["pe"])
        torch.testing.assert_close(rec.results[i].keys * real, k * real, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rec.results[i].queries * real, q * real, atol=1e-5, rtol=1e-5)
