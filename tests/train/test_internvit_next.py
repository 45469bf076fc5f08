"""Tests for train/internvit_next against transformers' InternVL and dense references."""
from __future__ import annotations

import pytest
import torch
from transformers import (InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig,
                          InternVLVisionModel, Qwen2Config)

from train.internvit_next import (InternViTNextConfig, convert_vision_model, num_image_tokens,
                                  swap_vision_tower, variant)
from train.internvit_next.attention import dense_window_reference, window_attention
from train.internvit_next.rope2d import apply_rope2d, rope2d_angles

ATOL = 1e-5


def _vision_cfg() -> InternVLVisionConfig:
    return InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                image_size=[32, 32], patch_size=[8, 8], use_qk_norm=True,
                                attn_implementation="eager", layer_scale_init_value=0.5)


def _vision() -> InternVLVisionModel:
    torch.manual_seed(0)
    m = InternVLVisionModel(_vision_cfg()).eval()
    with torch.no_grad():  # non-trivial pos-embeddings / cls so conversion errors show up
        m.embeddings.position_embeddings.normal_()
        m.embeddings.cls_token.normal_()
    return m


def test_conversion_copies_every_weight():
    hf = _vision()
    nxt = convert_vision_model(hf, variant("A0"))
    src, dst = hf.state_dict(), nxt.state_dict()
    assert set(src) == set(dst)
    for k in src:
        torch.testing.assert_close(dst[k], src[k], atol=0, rtol=0)
    assert convert_vision_model(hf, variant("A3")).embeddings.position_embeddings is None


def test_a0_matches_transformers_vision_model():
    hf = _vision()
    nxt = convert_vision_model(hf, variant("A0")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        out = nxt(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=0)
    for a, b in zip(out.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_a0_inside_internvl_same_logits():
    torch.manual_seed(0)
    cfg = InternVLConfig(vision_config=_vision_cfg().to_dict(),
                         text_config=Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=1, vocab_size=64),
                         image_token_id=5, downsample_ratio=0.5)
    vlm = InternVLForConditionalGeneration(cfg).eval()
    n_img = num_image_tokens(32, 32, 8, 0.5)
    ids = torch.tensor([[1] + [5] * n_img + [2, 3]])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = vlm(input_ids=ids, pixel_values=x).logits
        swap_vision_tower(vlm, variant("A0"))
        out = vlm(input_ids=ids, pixel_values=x).logits
    assert type(vlm.model.vision_tower).__name__ == "InternViTNext"
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("h,w,k", [(4, 4, 2), (5, 7, 3), (6, 4, 4)])
def test_window_attention_matches_dense_masked_reference(h, w, k):
    torch.manual_seed(1)
    q, kk, v = (torch.randn(2, 2, h * w, 8, dtype=torch.float64) for _ in range(3))
    out = window_attention(q, kk, v, h, w, k, 0.3)
    ref = dense_window_reference(q, kk, v, h, w, k, 0.3)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_rope2d_relative_property():
    """<R(p)q, R(p')k> depends only on p - p' (2-D)."""
    torch.manual_seed(2)
    ang = rope2d_angles(4, 4, 8).float()
    q, k = torch.randn(8), torch.randn(8)
    qr = apply_rope2d(q.expand(16, 8), ang)
    kr = apply_rope2d(k.expand(16, 8), ang)
    # pairs (0,0)-(1,1) and (2,2)-(3,3): same offset -> same dot product
    d1 = qr[0 * 4 + 0] @ kr[1 * 4 + 1]
    d2 = qr[2 * 4 + 2] @ kr[3 * 4 + 3]
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["A2", "A4", "A5"])
def test_native_resolution_batch_equals_one_by_one(name):
    nxt = convert_vision_model(_vision(), variant(name)).eval()
    imgs = [torch.randn(3, 32, 48), torch.randn(3, 40, 24), torch.randn(3, 32, 32)]
    with torch.no_grad():
        batch = nxt(pixel_values=imgs)
        for i, im in enumerate(imgs):
            one = nxt(pixel_values=im[None]).last_hidden_state[0]
            torch.testing.assert_close(batch.last_hidden_state[i, : one.shape[0]], one, atol=ATOL, rtol=0)
    assert batch.grid_hw == [(4, 6), (5, 3), (4, 4)]


def test_window_layers_are_local():
    """Window-only model: perturbing the bottom-right window leaves top-left patch tokens unchanged."""
    cfg = InternViTNextConfig("t", window=2, full_layers=(), native_resolution=True)
    nxt = convert_vision_model(_vision(), cfg).eval()
    torch.nn.init.zeros_(nxt.embeddings.cls_token)
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 24:, 24:] += 1.0  # bottom-right patch only (window (1,1))
    with torch.no_grad():
        a, b = nxt(pixel_values=x).last_hidden_state, nxt(pixel_values=y).last_hidden_state
    # patch queries see only their window's keys (not cls), so the top-left window is untouched
    tl = [1 + r * 4 + c for r in range(2) for c in range(2)]
    torch.testing.assert_close(a[0, tl], b[0, tl], atol=1e-6, rtol=0)
    assert (a[0, 16] - b[0, 16]).abs().max() > 1e-4


def test_config_validation_and_tokens():
    with pytest.raises(ValueError, match="window"):
        InternViTNextConfig(window=-1)
    with pytest.raises(KeyError, match="A9"):
        variant("A9")
    assert num_image_tokens(448, 448, 14, 0.5) == 256
    assert num_image_tokens(448, 896, 14, 0.5) == 512
    with pytest.raises(ValueError, match="multiple"):
        num_image_tokens(450, 448, 14)


def test_spatial_tokens_shapes_and_pooling_oracle():
    from train.internvit_next.spatial_tokens import SpatialTokens, multiscale_pooled_tokens

    g = torch.randn(2, 8, 4, 6, dtype=torch.float64)
    assert SpatialTokens(8, 6).double()(g).shape == (2, 6, 8)
    t = multiscale_pooled_tokens(g, (1, 2))
    torch.testing.assert_close(t[:, 0], g.mean(dim=(2, 3)), atol=1e-12, rtol=0)
    torch.testing.assert_close(t[:, 1], g[:, :, :2, :3].mean(dim=(2, 3)), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="n must"):
        SpatialTokens(8, 0)


def test_compression_keeps_detail_merges_flat():
    from train.internvit_next.compression import compress_tokens

    g = torch.ones(4, 4, 3, dtype=torch.float64)
    g[2:, 2:] = torch.randn(2, 2, 3, dtype=torch.float64)  # detailed bottom-right block
    toks, regs = compress_tokens(g, budget=7)  # 4 blocks + one expanded block (3 extra)
    assert toks.shape == (7, 3) and regs.shape == (7, 4)
    torch.testing.assert_close(toks[:3], torch.ones(3, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(toks[3:], g[2:, 2:].reshape(4, 3), atol=1e-12, rtol=0)
    assert regs[0].tolist() == [0, 0, 2, 2] and regs[3].tolist() == [2, 2, 3, 3]
    t8, r8 = compress_tokens(g, budget=8)  # one leftover slot -> global mean, region = whole grid
    assert r8[-1].tolist() == [0, 0, 4, 4]
    with pytest.raises(ValueError, match="budget"):
        compress_tokens(g, budget=2)
