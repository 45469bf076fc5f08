"""attention_hook: per-model hooks through transformers' AttentionInterface.

Oracles: eager attention with output_attentions=True (two models in one process, each recorded
exactly whether or not the other records), the same model never attached (bit-identical logits),
a copy of the model with its query projection scaled (a softmax-temperature hook), and the
process-wide registries as they were before.
"""

from __future__ import annotations

import copy

import pytest
import torch
from probe.testing.hand_built import build_tiny, make_batch
from test_attention_stats import ATOL, FAMILIES, RTOL, oracle_rows, oracle_shares
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from probe.capture.attention import AttentionRecorder
from probe.capture.attention_hook import PREFIX, attach
from probe.segments import Segment


def _registries() -> tuple[dict, dict]:
    return dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)


def _logits(tiny, inputs) -> torch.Tensor:
    with torch.no_grad():
        return tiny.model(**inputs).logits


def _eager(tiny, inputs):
    model = copy.deepcopy(tiny.model)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        return model(**inputs, output_attentions=True)


def _check(rec: AttentionRecorder, eager, segments, qpos) -> None:
    for layer, attn in enumerate(eager.attentions):
        got = rec.results[layer]
        torch.testing.assert_close(got.share.double(), oracle_shares(attn, segments), atol=ATOL, rtol=RTOL, equal_nan=True)
        torch.testing.assert_close(got.rows.double(), oracle_rows(attn, qpos), atol=ATOL, rtol=RTOL, equal_nan=True)


def _perturbed(tiny, seed: int):
    """A second model of the same family with other weights and its own config."""
    other = copy.deepcopy(tiny)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    other.decoder_attn = [m for m in other.model.modules() if type(m) is type(tiny.decoder_attn[0])]
    return other


@pytest.mark.parametrize("shared_config", [False, True])
def test_two_models_record_independently(shared_config):
    """Model A and B in one process: each recorded exactly while the other records or not; B untouched when idle."""
    a = build_tiny("llava")
    if shared_config:  # a second model built from the very same config object
        b = copy.copy(a)
        torch.manual_seed(5)
        b.model = type(a.model)(a.model.config).eval()
        b.decoder_attn = [layer.self_attn for layer in b.model.model.language_model.layers]
        assert b.decoder_attn[0].config is a.decoder_attn[0].config
    else:
        b = _perturbed(a, 1)
    inputs, segments, qpos = make_batch(a, "left")
    before = _registries()
    plain_a, plain_b = _logits(a, inputs), _logits(b, inputs)
    assert not torch.equal(plain_a, plain_b)
    eager_a, eager_b = _eager(a, inputs), _eager(b, inputs)
    layers = list(range(len(a.decoder_attn)))
    rec_a, rec_b = AttentionRecorder(a.decoder_attn, layers), AttentionRecorder(b.decoder_attn, layers)
    for rec in (rec_a, rec_b):
        rec.set_batch(segments, qpos)

    with rec_a:  # A records, B does not: B's forward is bit-identical and A's results are untouched by it
        got_a = _logits(a, inputs)
        assert torch.equal(_logits(b, inputs), plain_b)
    _check(rec_a, eager_a, segments, qpos)
    torch.testing.assert_close(got_a, plain_a, atol=1e-6, rtol=1e-5)
    assert rec_b.results == {}

    rec_a.reset()
    with rec_a, rec_b:  # both record, forwards interleaved
        _logits(b, inputs)
        _logits(a, inputs)
    _check(rec_a, eager_a, segments, qpos)
    _check(rec_b, eager_b, segments, qpos)

    rec_b.reset()
    with rec_b:  # B records, A does not
        assert torch.equal(_logits(a, inputs), plain_a)
        _logits(b, inputs)
    _check(rec_b, eager_b, segments, qpos)

    assert _registries() == before
    assert a.model.config.text_config._attn_implementation == "sdpa"
    assert torch.equal(_logits(a, inputs), plain_a) and torch.equal(_logits(b, inputs), plain_b)


@pytest.mark.parametrize("family", FAMILIES)
def test_pass_through_hook_is_bit_identical(tiny_factory, family):
    """A hook that only proceeds leaves logits bit-identical: the mask built under our name is the kernel's own."""
    tiny = tiny_factory(family)
    inputs, segments, _ = make_batch(tiny, "left")
    plain = _logits(tiny, inputs)
    before = _registries()
    seen: list[tuple[int, tuple[int, ...] | None]] = []

    def hook(call, proceed):
        mask = call.attention_mask
        seen.append((call.layer, None if mask is None else tuple(mask.shape)))
        return proceed(call)

    with attach(tiny.decoder_attn, hook):
        name = tiny.decoder_attn[0].config._attn_implementation
        assert name.startswith(PREFIX) and name.endswith("+sdpa")
        assert torch.equal(_logits(tiny, inputs), plain)
    assert [layer for layer, _ in seen] == list(range(len(tiny.decoder_attn)))
    # the left-padded batch needs a real mask: the hook saw the 4-D mask sdpa gets
    assert all(shape is not None and len(shape) == 4 and shape[-1] == segments.shape[1] for _, shape in seen)
    assert _registries() == before
    assert tiny.decoder_attn[0].config._attn_implementation == "sdpa"
    assert torch.equal(_logits(tiny, inputs), plain)


def test_edit_hook_matches_scaled_queries(tiny_factory):
    """A temperature edit on layer 1 only (scaling x t) equals the model whose layer-1 query projection is scaled by t."""
    tiny = tiny_factory("llava")  # Llama: no q_proj bias, RoPE is linear in q
    inputs, _, _ = make_batch(tiny, "right")
    t = 1.7
    ref = copy.deepcopy(tiny.model)
    with torch.no_grad():
        ref.model.language_model.layers[1].self_attn.q_proj.weight.mul_(t)
        expected = ref(**inputs).logits
    order: list[str] = []

    def temperature(call, proceed):
        order.append(f"temperature{call.layer}")
        return proceed(call.replace(scaling=call.scaling * t))

    def observe(call, proceed):
        order.append(f"observe{call.layer}:{call.scaling * call.query.shape[-1] ** 0.5:.2f}")
        return proceed(call)

    with attach(tiny.decoder_attn, temperature, layers=[1]), attach(tiny.decoder_attn, observe, layers=[1]):
        got = _logits(tiny, inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, _logits(tiny, inputs), atol=1e-3)
    assert order == ["temperature1", f"observe1:{t:.2f}"]  # attach order: the first attached runs first


def test_detach_order_and_errors(tiny_factory):
    """Hooks detach in any order; the last one restores sdpa; misuse fails with one clear line."""
    tiny = tiny_factory("llava")
    inputs, _, _ = make_batch(tiny, "left")
    plain = _logits(tiny, inputs)
    before = _registries()
    calls: list[int] = []
    first = attach(tiny.decoder_attn, lambda c, p: (calls.append(1), p(c))[1], layers=[0])
    second = attach(tiny.decoder_attn, lambda c, p: (calls.append(2), p(c))[1], layers=[0, 1])
    first.detach()
    first.detach()  # idempotent
    assert tiny.decoder_attn[0].config._attn_implementation.startswith(PREFIX)
    _logits(tiny, inputs)
    assert calls == [2, 2]
    second.detach()
    assert _registries() == before and torch.equal(_logits(tiny, inputs), plain)
    with pytest.raises(ValueError, match="layers \\[7\\]"):
        attach(tiny.decoder_attn, lambda c, p: p(c), layers=[7])
    tiny.model.set_attn_implementation("eager")
    try:
        with pytest.raises(ValueError, match="'eager'"):
            attach(tiny.decoder_attn, lambda c, p: p(c))
    finally:
        tiny.model.set_attn_implementation("sdpa")
    assert _registries() == before


def test_registry_restored():
    """Guard for the one private internal we touch: GeneralInterface's class-wide `_global_mapping` holds registrations."""
    fn = lambda *a, **k: None  # noqa: E731
    AttentionInterface.register(f"{PREFIX}-probe+sdpa", fn)
    try:
        assert AttentionInterface._global_mapping[f"{PREFIX}-probe+sdpa"] is fn
    finally:
        AttentionInterface._global_mapping.pop(f"{PREFIX}-probe+sdpa")
    assert f"{PREFIX}-probe+sdpa" not in AttentionInterface()


def test_segments_record_under_autograd(tiny_factory):
    """With gradients on, the recorded forward keeps the model's graph: same gradients as without the recorder."""
    tiny = tiny_factory("llava")
    inputs, segments, qpos = make_batch(tiny, "right")
    params = [tiny.decoder_attn[1].v_proj.weight, tiny.decoder_attn[0].q_proj.weight]
    rec = AttentionRecorder(tiny.decoder_attn, [0, 1])
    rec.set_batch(segments, qpos)
    grads = []
    for on in (False, True):
        tiny.model.zero_grad()
        if on:
            with rec:
                tiny.model(**inputs).logits[segments != Segment.PAD].square().sum().backward()
        else:
            tiny.model(**inputs).logits[segments != Segment.PAD].square().sum().backward()
        grads.append([p.grad.clone() for p in params])
    tiny.model.zero_grad()
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
    assert rec.results[1].share is not None and not rec.results[1].share.requires_grad
