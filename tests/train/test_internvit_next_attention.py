"""InternViT-Next attention: window groups vs a dense O(N^2) masked reference, 2-D RoPE vs transformers'
Qwen2.5-VL vision rotary, and native resolution (packed batch == one image at a time)."""

from __future__ import annotations

import pytest
import torch

from train.internvit_next import convert_vision_model, variant
from train.internvit_next.attention import grouped_attention, pack_plan
from train.internvit_next.rope2d import apply_rope2d, packed_rope, rope2d_angles
from train.internvit_next.tiny import tiny_vision

torch.set_num_threads(1)


def dense_mask(grids: list[tuple[int, int]], k: int) -> torch.Tensor:
    """Reference [T, T]: same image, and for a patch query: the key is its image's CLS or in its k x k window."""
    img, win, cls = [], [], []
    for n, (h, w) in enumerate(grids):
        img += [n] * (1 + h * w)
        cls += [True] + [False] * (h * w)
        win += [-1] + [(r // k) * 10_000 + c // k for r in range(h) for c in range(w)]
    img, win, cls = torch.tensor(img), torch.tensor(win), torch.tensor(cls)
    same_img = img[:, None] == img[None, :]
    local = (win[:, None] == win[None, :]) | cls[None, :] | cls[:, None]
    return same_img & local


def dense_attention(q, k, v, mask, scale):
    s = torch.einsum("thd,shd->hts", q, k) * scale
    return torch.einsum("hts,shd->thd", s.masked_fill(~mask, float("-inf")).softmax(-1), v)


@pytest.mark.parametrize("grids,k", [([(4, 4)], 2), ([(5, 7)], 3), ([(6, 4), (3, 5), (2, 2)], 4), ([(8, 8)], 8)])
def test_window_attention_matches_dense_reference(grids, k):
    torch.manual_seed(1)
    plan = pack_plan(grids, k)
    q, kk, v = (torch.randn(plan.total, 2, 8, dtype=torch.float64) for _ in range(3))
    out = grouped_attention(q, kk, v, plan.window, 0.3)
    ref = dense_attention(q, kk, v, dense_mask(grids, k), 0.3)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_full_attention_groups_match_dense_reference():
    torch.manual_seed(2)
    grids = [(3, 4), (2, 2)]
    plan = pack_plan(grids)
    q, kk, v = (torch.randn(plan.total, 2, 8, dtype=torch.float64) for _ in range(3))
    mask = dense_mask(grids, 10_000)  # one window covers the image: full attention per image
    torch.testing.assert_close(grouped_attention(q, kk, v, (plan.full,), 0.5),
                               dense_attention(q, kk, v, mask, 0.5), atol=1e-12, rtol=0)


def test_window_groups_are_linear_in_tokens():
    """No [N, N] mask: key rows per window are k*k + 1 wide, whatever the image size."""
    plan = pack_plan([(96, 96)], 8)
    cls, win = plan.window
    assert win.kv_idx.shape == (144, 65) and cls.kv_idx.shape == (1, 1 + 96 * 96)


def test_rope_matches_qwen2_5_vl_vision_rotary():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (Qwen2_5_VLVisionRotaryEmbedding,
                                                                    apply_rotary_pos_emb_vision)

    cfg = Qwen2_5_VLVisionConfig(hidden_size=64, num_heads=4)  # head_dim 16
    h, w = 3, 5
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    cos_ref, sin_ref = Qwen2_5_VLVisionRotaryEmbedding(cfg)(torch.zeros(1), pos)
    cos, sin = packed_rope([(h, w)], 16)
    torch.testing.assert_close(cos[1:], cos_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[1:], sin_ref, atol=1e-6, rtol=0)
    assert torch.equal(cos[0], torch.ones(16)) and torch.equal(sin[0], torch.zeros(16))  # CLS: no rotation
    q, k = torch.randn(h * w, 4, 16), torch.randn(h * w, 4, 16)
    q_ref, k_ref = apply_rotary_pos_emb_vision(q, k, cos_ref, sin_ref)
    torch.testing.assert_close(apply_rope2d(q, cos[1:], sin[1:]), q_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rope2d(k, cos[1:], sin[1:]), k_ref, atol=1e-6, rtol=0)


def test_rope_scores_depend_only_on_2d_offset():
    torch.manual_seed(3)
    ang = torch.cat([rope2d_angles(5, 5, 8)] * 2, -1).float()
    cos, sin = ang.cos(), ang.sin()
    q = apply_rope2d(torch.randn(1, 1, 8).expand(25, 1, 8), cos, sin)[:, 0]
    k = apply_rope2d(torch.randn(1, 1, 8).expand(25, 1, 8), cos, sin)[:, 0]
    d1, d2 = q[0 * 5 + 0] @ k[1 * 5 + 2], q[3 * 5 + 2] @ k[4 * 5 + 4]  # offset (1, 2) twice
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)
    assert (q[0] @ k[2 * 5 + 1] - d1).abs() > 1e-4  # offset (2, 1) differs: rows and columns are distinct


@pytest.mark.parametrize("name", ["A0", "A1", "A2", "A5"])
def test_native_resolution_batch_equals_one_by_one(name):
    nxt = convert_vision_model(tiny_vision(), variant(name, window=2))
    torch.manual_seed(4)
    imgs = [torch.randn(3, 32, 48), torch.randn(3, 40, 24), torch.randn(3, 16, 16)]
    with torch.no_grad():
        batch = nxt(imgs, output_hidden_states=True)
        assert batch.grid_hw == [(4, 6), (5, 3), (2, 2)]
        for i, im in enumerate(imgs):
            one = nxt(im[None], output_hidden_states=True)
            n = one.last_hidden_state.shape[1]
            torch.testing.assert_close(batch.last_hidden_state[i, :n], one.last_hidden_state[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch.hidden_states[2][i, :n], one.hidden_states[2][0], atol=1e-5, rtol=0)
            assert batch.last_hidden_state[i, n:].abs().sum() == 0  # padding is zero


def test_window_layers_are_local():
    """One window layer: perturbing the bottom-right window leaves the other windows' patch tokens unchanged."""
    nxt = convert_vision_model(tiny_vision(layers=1), variant("A1", window=2))
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 16:, 16:] += 1.0  # window (1, 1) of the 4x4 patch grid
    with torch.no_grad():
        a, b = nxt(x).last_hidden_state[0, 1:].reshape(4, 4, -1), nxt(y).last_hidden_state[0, 1:].reshape(4, 4, -1)
    diff = (a - b).abs().amax(-1)
    assert diff[:2].max() < 1e-6 and diff[2:, :2].max() < 1e-6
    assert diff[2:, 2:].min() > 1e-4
    full = convert_vision_model(tiny_vision(layers=1), variant("A1"))
    with torch.no_grad():
        spread = (full(x).last_hidden_state - full(y).last_hidden_state)[0, 1:].abs().amax(-1)
    assert spread.min() > 1e-6  # control: with full attention the change reaches every patch
