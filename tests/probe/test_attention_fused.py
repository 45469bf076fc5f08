"""Shares from the model's own kernel call (one-hot value columns), on masks that are not causal.

Oracles: eager attention with output_attentions=True of a tiny Gemma 3 (image tokens attend to each
other bidirectionally, a sliding-window layer), reduced in float64 by explicit loops; for bfloat16,
the float32 softmax of the same bf16 q/k.
"""

from __future__ import annotations

import copy

import pytest
import torch
from probe.testing.hand_built import END_TOKEN, IMAGE_TOKEN, START_TOKEN, segment_of
from test_attention_stats import ATOL, RTOL, oracle_rows, oracle_shares

from probe.capture import _attn_math
from probe.capture._attn_math import MaskSource
from probe.capture.attention import AttentionRecorder
from probe.capture.attention_hook import attach
from probe.segments import Segment, last_prompt_index


def tiny_gemma3():
    """Tiny random-weight Gemma 3 (SigLIP tower, 4 image tokens, layer 0 sliding window 6)."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=6,
            layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
        ),
        vision_config=tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            image_size=8, patch_size=2),
        mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN, boi_token_index=START_TOKEN, eoi_token_index=END_TOKEN,
    )
    model = tf.Gemma3ForConditionalGeneration(cfg).eval()
    return model, [layer.self_attn for layer in model.model.language_model.layers]


def gemma_batch(padding: str):
    """Two rows (text, image span, text, answer) of different lengths; the second has no answer."""
    span = [START_TOKEN] + [IMAGE_TOKEN] * 4 + [END_TOKEN]
    rows = [([5, 6, 7] + span + [8, 9], [10, 11]), ([5] + span + [8, 9, 12, 13], [])]
    seq = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros((2, seq), dtype=torch.long)
    segments = torch.zeros((2, seq), dtype=torch.long)
    for b, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        off = seq - n if padding == "left" else 0
        ids[b, off : off + n] = torch.tensor(prompt + answer)
        segments[b, off : off + n] = torch.tensor([int(segment_of(t)) for t in prompt] + [int(Segment.ANSWER)] * len(answer))
    inputs = {"input_ids": ids, "attention_mask": (segments != Segment.PAD).long(),
              "token_type_ids": (ids == IMAGE_TOKEN).long(), "pixel_values": torch.randn(2, 3, 8, 8)}
    qpos = torch.stack([last_prompt_index(segments), torch.tensor([3, 4])], dim=1)
    return inputs, segments, qpos


@pytest.fixture(scope="module")
def gemma3():
    return tiny_gemma3()


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("dropout", [False, True])
def test_gemma3_bidirectional_image_block(gemma3, padding, dropout):
    """Recorder == eager on Gemma 3 (image block bidirectional, sliding layer), fused and second-pass (dropout) paths."""
    model, attn = gemma3
    inputs, segments, qpos = gemma_batch(padding)
    eager_model = copy.deepcopy(model)
    eager_model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = eager_model(**inputs, output_attentions=True)
    # the test exercises non-causal attention: an image query puts mass on a later image key
    first_image = int((segments[0] == Segment.VISUAL).nonzero()[0])
    assert float(eager.attentions[1][0, :, first_image, first_image + 1].min()) > 0
    rec = AttentionRecorder(attn, [0, 1])
    rec.set_batch(segments, qpos)

    def with_dropout(call, proceed):  # training-mode dropout: the recorder falls back to its second pass
        return proceed(call.replace(dropout=0.5))

    with torch.no_grad():
        if dropout:  # last layer only, so the layers before it see the eager model's inputs
            with attach(attn, with_dropout, layers=[1], outermost=True), rec:  # outermost: as if the model passed it
                model(**inputs)
        else:
            with rec:
                got = model(**inputs).logits
            plain = model(**inputs).logits
            assert torch.equal(got, plain)  # head dim 16: the kernel's own columns, bit for bit
    for layer, a in enumerate(eager.attentions):
        torch.testing.assert_close(rec.results[layer].share.double(), oracle_shares(a, segments), atol=ATOL, rtol=RTOL,
                                   equal_nan=True)
        torch.testing.assert_close(rec.results[layer].rows.double(), oracle_rows(a, qpos), atol=ATOL, rtol=RTOL,
                                   equal_nan=True)


def test_second_pass_keeps_keys_the_mask_allows():
    """The fallback drops only keys no query of a block may see under the real mask: a bidirectional block, by formula."""
    g = torch.Generator().manual_seed(0)
    seq = 10
    q, k = torch.randn(1, 2, seq, 8, generator=g), torch.randn(1, 2, seq, 8, generator=g)
    segments = torch.tensor([[1, 1, 4, 2, 2, 2, 2, 5, 1, 1]])
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed[2:8, 2:8] = True  # image span attends bidirectionally
    mask = MaskSource(allowed[None, None], segments != 0, True, None)
    got = _attn_math.attention_shares(q, k, segments, scaling=0.4, mask=mask, block=1)
    probs = torch.softmax((q.double() @ k.double().transpose(-1, -2) * 0.4).masked_fill(~allowed, float("-inf")), -1)
    onehot = torch.nn.functional.one_hot(segments[0], len(Segment)).double()
    mass = probs[0] @ onehot  # [head, seq, segments]
    text = (segments[0] == Segment.TEXT).nonzero().flatten()
    torch.testing.assert_close(got[0, :, 2].double(), mass[:, text].mean(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got[0, :, 0].double(), mass[:, seq - 1], atol=1e-6, rtol=1e-6)


def test_bf16_error_is_bounded(tiny_factory, batch_factory):
    """bfloat16: fused shares vs the float32 softmax of the same bf16 q/k (second pass), within the stated 2e-2."""
    tiny = tiny_factory("llava")
    model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    attn = [layer.self_attn for layer in model.model.language_model.layers]
    inputs, segments, qpos = batch_factory(tiny, "left")
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    fused = AttentionRecorder(attn, [0, 1], rows=False, keys=True, queries=True)
    fused.set_batch(segments, qpos)
    with fused, torch.no_grad():
        model(**inputs)
    for layer in (0, 1):
        got = fused.results[layer]
        mask = MaskSource(None, segments != 0, True, None)
        ref = _attn_math.attention_shares(got.queries, got.keys, segments, scaling=attn[layer].scaling, mask=mask, block=None)
        err = (got.share - ref).abs().nan_to_num().max().item()
        assert 0 < err < 2e-2, err  # nonzero: bf16 rounding is really there; see the benchmark for realistic shapes


@pytest.mark.parametrize("align", [1, 8, 16])
def test_widened_width_rounding_stays_exact(gemma3, align):
    """The widened call at any head-width rounding (--widen-align; GPUs need a multiple of 8) == eager, and the
    model's own output is unchanged; the width is what the rule says (head dim 16 + the batch's mass columns)."""
    model, attn = gemma3
    inputs, segments, qpos = gemma_batch("right")
    eager_model = copy.deepcopy(model)
    eager_model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = eager_model(**inputs, output_attentions=True)
    rec = AttentionRecorder(attn, [0, 1], widen_align=align)
    rec.set_batch(segments, qpos)
    with torch.no_grad(), rec:
        got = model(**inputs).logits
    with torch.no_grad():
        torch.testing.assert_close(got, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    n_codes = len(_attn_math.mass_codes(segments))
    assert _attn_math.widen_width(16, 16, n_codes, torch.device("cpu"), align) == -(-(16 + n_codes) // align) * align
    for layer, a in enumerate(eager.attentions):
        torch.testing.assert_close(rec.results[layer].share.double(), oracle_shares(a, segments), atol=ATOL, rtol=RTOL,
                                   equal_nan=True)
