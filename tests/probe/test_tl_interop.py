"""TransformerLens interop: the TransformerBridge's own hooks against our capture, and a store example as an ActivationCache.

Oracles: TransformerLens 4.x `TransformerBridge.run_with_cache` on the same tiny model and inputs (it forces eager
attention): `hook_pattern` against our recorder's rows for every query, `hook_rot_k` against our post-RoPE keys,
at 1e-5; for the store, the bridge's cache of the example run alone.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from probe.capture.attention import AttentionRecorder
from probe.data.example import Example
from probe.interop import activation_cache, tl_activations
from probe.segments import Segment

ATOL, RTOL = 1e-5, 1e-5
HAS_TL = importlib.util.find_spec("transformer_lens") is not None
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_tl = pytest.mark.skipif(not HAS_TL, reason="transformer-lens not installed (extra 'tl')")
# families whose multimodal architecture TransformerBridge boots without torchvision (Qwen3-VL's adapter requires it)
BRIDGE_FAMILIES = ["llava", "llava_next", "llava_onevision", "gemma3"]


def _examples() -> list[Example]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (64, 30))]
    return [Example("a", images[0], "What color is it?", answer="red"),
            Example("b", images[1], "이 그림에 무엇이 보입니까?", lang="ko")]


def _bridge(model, tokenizer, folder):
    from probe.interop import boot_bridge

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # processors with no video processor (no torchvision) cannot be saved
    return boot_bridge(folder)


@needs_tl
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
def test_bridge_hooks_equal_our_capture(tiny_adapter, tmp_path, family, padding):
    adapter = tiny_adapter(family)
    torch_version = torch.__version__
    bridge = _bridge(adapter.model, adapter.processor.tokenizer, tmp_path)
    # booting installed nothing (transformer-lens would pip-install torchvision, upgrading torch)
    assert torch.__version__ == torch_version and (importlib.util.find_spec("torchvision") is not None) == HAS_TORCHVISION
    batch = adapter.build_inputs(_examples(), padding)
    extra = {k: v for k, v in batch.inputs.items() if k != "input_ids"}
    with torch.no_grad():
        _, cache = bridge.run_with_cache(batch.inputs["input_ids"], **extra)
    seq = batch.segments.shape[1]
    rec = AttentionRecorder(adapter.attention_modules, list(range(adapter.num_layers)), keys=True)
    rec.set_batch(batch.segments, torch.arange(seq).expand(2, seq).contiguous())  # every position a query
    with rec, torch.no_grad():
        adapter.model(**batch.inputs)
    real = batch.segments != Segment.PAD
    pairs = real[:, None, :, None] & real[:, None, None, :]
    for layer in range(adapter.num_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        rows = rec.results[layer].rows
        assert pattern.shape == rows.shape
        torch.testing.assert_close(rows[pairs.expand_as(rows)], pattern[pairs.expand_as(pattern)].float(), atol=ATOL, rtol=RTOL)
        rot_k = cache[f"blocks.{layer}.attn.hook_rot_k"]  # [batch, pos, kv_head, d_head]
        keys = rec.results[layer].keys.transpose(1, 2)
        assert rot_k.shape == keys.shape
        torch.testing.assert_close(keys[real], rot_k[real].float(), atol=ATOL, rtol=RTOL)
    if family == "gemma3":  # the bridge and we both follow the bidirectional image block
        b, first = 0, int((batch.segments[0] == Segment.VISUAL).nonzero()[0])
        assert float(cache["blocks.1.attn.hook_pattern"][b, :, first, first + 1].min()) > 0


@pytest.fixture(scope="module")
def llava_store(tiny_llava_adapter, tmp_path_factory):
    from probe.capture.run import capture
    from probe.capture.spec import CaptureSpec

    spec = CaptureSpec(keys=True, queries=True, resid=("query", "pooled", "tokens"), layers=(0, 2), dtype="float32",
                       batch_size=2)
    examples = [*_examples(), Example("c", _examples()[0].image, "Is it round?")]
    return capture(tiny_llava_adapter, examples, tmp_path_factory.mktemp("tl") / "s.zarr", spec, progress=False), examples


@needs_tl
def test_store_example_opens_as_activation_cache(tiny_llava_adapter, tiny_llava_dir, llava_store):
    from probe.interop import boot_bridge

    store, examples = llava_store
    bridge = boot_bridge(tiny_llava_dir)
    cache = activation_cache(store, "b", model=bridge)
    assert tiny_llava_adapter.num_layers == 3
    want = {f"blocks.{i}.{hook}" for i in (0, 2) for hook in ("attn.hook_rot_k", "attn.hook_rot_q", "hook_resid_post")}
    assert set(cache.keys()) == want  # reductions (shares, pooled, query-slot rows) are not TL activations
    assert want <= set(bridge.hook_dict)  # canonical names: the bridge's own hook points
    single = tiny_llava_adapter.build_inputs(examples[1:2])
    with torch.no_grad():
        _, own = bridge.run_with_cache(single.inputs["input_ids"],
                                       **{k: v for k, v in single.inputs.items() if k != "input_ids"})
    for name in want:
        assert cache[name].shape == own[name].shape, name
        torch.testing.assert_close(cache[name], own[name].float(), atol=ATOL, rtol=RTOL, msg=name)
    # ActivationCache's own tools work on it
    assert cache["rot_k", 2] is cache["blocks.2.attn.hook_rot_k"] and cache["resid_post", 0].shape[-1] == 64


def test_tl_activations_need_no_transformer_lens(llava_store, monkeypatch):
    store, _ = llava_store
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import transformer_lens now fails
    acts = tl_activations(store.path, 0)
    seq = int(store.dataset["seq_len"].values[0])
    k = acts["blocks.2.attn.hook_rot_k"]
    assert k.dtype == torch.float32 and k.shape[:2] == (1, seq) and not k.isnan().any()
    assert acts["blocks.2.hook_resid_post"].shape[:2] == (1, seq) and "blocks.1.hook_resid_post" not in acts
    assert not any("hook_pattern" in name for name in acts)  # rows of a few queries are not a pattern
    with pytest.raises(ImportError, match="needs transformer-lens"):
        activation_cache(store, 0)
    with pytest.raises(KeyError, match="no example 'zz'"):
        tl_activations(store, "zz")


@needs_tl
def test_the_pip_guard_still_finds_its_target():
    """boot_bridge disables transformer-lens's on-the-fly `pip install torchvision` (a private function)."""
    from transformer_lens.model_bridge.sources.transformers import helpers

    from probe.interop.tl import _no_pip_installs

    assert callable(helpers._ensure_torchvision)
    with _no_pip_installs():
        assert helpers._ensure_torchvision() is False
    assert helpers._ensure_torchvision is not None
