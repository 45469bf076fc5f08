"""InternViT-Next: conversion, A0 == transformers' InternVLVisionModel (fp32, 1e-5), configs and variants."""

from __future__ import annotations

import pytest
import torch

from train.internvit_next import VARIANTS, InternViTNextConfig, convert_vision_model, variant
from train.internvit_next.tiny import tiny_vision

torch.set_num_threads(1)
ATOL = 1e-5  # fp32, SDPA vs transformers' eager attention


def test_conversion_carries_every_weight():
    hf = tiny_vision()
    src = hf.state_dict()
    dst = convert_vision_model(hf, variant("A0")).state_dict()
    assert set(src) <= set(dst)
    for k in src:
        torch.testing.assert_close(dst[k], src[k], atol=0, rtol=0)
    no_abs = convert_vision_model(hf, variant("A1")).state_dict()
    assert set(src) - set(no_abs) == {"embeddings.position_embeddings"}  # removed in favour of 2-D RoPE
    assert hf.embeddings.position_embeddings is not None  # the source model is left intact


def test_conversion_adds_only_spatial_kernels():
    hf = tiny_vision()
    extra = set(convert_vision_model(hf, variant("A5")).state_dict()) - set(hf.state_dict())
    assert extra and all(k.startswith("tokenizer.conv.") for k in extra)


@pytest.mark.parametrize("layers,heads,dim", [(3, 2, 32), (2, 4, 48)])
def test_a0_matches_transformers_vision_model(layers, heads, dim):
    hf = tiny_vision(layers=layers, heads=heads, dim=dim)
    nxt = convert_vision_model(hf, variant("A0"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        out = nxt(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=0)
    assert len(out.hidden_states) == len(ref.hidden_states) == layers + 1
    for a, b in zip(out.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_a0_interpolates_abs_pos_like_transformers_at_other_sizes():
    """Kept learned positions are bicubic-interpolated to the new grid exactly as transformers does."""
    hf = tiny_vision()
    nxt = convert_vision_model(hf, variant("A0"))
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(nxt(x).last_hidden_state, hf(pixel_values=x).last_hidden_state, atol=ATOL, rtol=0)


def test_a0_gradients_match_transformers():
    hf = tiny_vision()
    nxt = convert_vision_model(hf, variant("A0"))
    x = torch.randn(1, 3, 32, 32)
    hf(pixel_values=x).last_hidden_state.square().sum().backward()
    nxt(x).last_hidden_state.square().sum().backward()
    ours = dict(nxt.named_parameters())
    assert set(ours) == {name for name, _ in hf.named_parameters()}  # A0 holds exactly the copied weights
    for name, p in hf.named_parameters():  # paired by name, not by position
        assert p.grad is not None and ours[name].grad is not None, name
        torch.testing.assert_close(ours[name].grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_variants_are_as_planned():
    assert set(VARIANTS) == {"A0", "A1", "A2", "A3a", "A3b", "A3c", "A4", "A5"}
    a0, a1, a2 = variant("A0"), variant("A1"), variant("A2")
    assert (a0.rope2d, a0.abs_pos, a0.window, a0.spatial, a0.keep_ratio) == (False, True, 0, "none", 1.0)
    assert a1.rope2d and not a1.abs_pos and a1.window == 0
    assert a2.window == 8 and a2.full_layers == (-1,)
    assert [variant(n).spatial for n in ("A3a", "A3b", "A3c")] == ["conv", "pool", "both"]
    assert variant("A4").keep_ratio < 1 and variant("A4").spatial == "none"
    a5 = variant("A5")
    assert a5.rope2d and a5.window and a5.spatial == "both" and a5.keep_ratio < 1
    assert variant("A2", window=4).window == 4
    assert [a2.window_layer(i, 4) for i in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("kwargs,match", [
    ({"window": -1}, "window"), ({"window": 1}, "window"), ({"rope2d": False, "abs_pos": False}, "position"),
    ({"full_layers": (1,)}, "full_layers"), ({"spatial": "grid"}, "spatial"), ({"n_spatial": 0}, "n_spatial"),
    ({"pool_scales": (0,)}, "pool_scales"), ({"keep_ratio": 0.0}, "keep_ratio"), ({"keep_ratio": 1.5}, "keep_ratio"),
    ({"score_on": "attention"}, "score_on"), ({"rope_theta": 0.0}, "rope_theta"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InternViTNextConfig(**kwargs)


def test_unknown_variant_and_bad_inputs():
    with pytest.raises(KeyError, match="A9"):
        variant("A9")
    nxt = convert_vision_model(tiny_vision(), variant("A1"))
    with pytest.raises(ValueError, match="multiple of patch"):
        nxt(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="head_dim"):
        convert_vision_model(tiny_vision(dim=36, heads=2), variant("A1"))  # head_dim 18
    with pytest.raises(TypeError, match="InternVLVisionModel"):
        convert_vision_model(torch.nn.Linear(2, 2), variant("A0"))
