"""AttentionRecorder against the oracle: eager attention with output_attentions=True, reduced in float64."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from probe.capture import _attn_math
from probe.capture import attention as attention_mod
from probe.capture._attn_math import MaskSource
from probe.capture.attention import AttentionRecorder
from probe.segments import Segment

ATOL, RTOL = 1e-5, 1e-5
FAMILIES = ["llava", "qwen2_vl", "internvl", "idefics3"]


def oracle_shares(attn: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """[batch, head, 3, n_segments] float64 from eager attention [batch, head, seq, seq], by explicit loops."""
    attn = attn.double()
    batch, heads, seq, _ = attn.shape
    out = torch.full((batch, heads, 3, len(Segment)), float("nan"), dtype=torch.float64)
    for b in range(batch):
        segs = segments[b].tolist()
        prompt = [t for t in range(seq) if segs[t] not in (Segment.PAD, Segment.ANSWER)]
        sources = [
            prompt[-1:],
            [t for t in range(seq) if segs[t] == Segment.ANSWER],
            [t for t in range(seq) if segs[t] == Segment.TEXT],
        ]
        for c, queries in enumerate(sources):
            if not queries:
                continue
            for s in Segment:
                keys = [t for t in range(seq) if segs[t] == s]
                mass = attn[b][:, queries][:, :, keys].sum(dim=-1) if keys else torch.zeros(heads, len(queries), dtype=torch.float64)
                out[b, :, c, s] = mass.mean(dim=1)
    return out


def oracle_rows(attn: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    """[batch, head, Q, seq] float64 rows of eager attention, NaN for absent queries."""
    batch, heads, seq, _ = attn.shape
    out = torch.full((batch, heads, qpos.shape[1], seq), float("nan"), dtype=torch.float64)
    for b in range(batch):
        for i, p in enumerate(qpos[b].tolist()):
            if p >= 0:
                out[b, :, i] = attn[b, :, p].double()
    return out


def eager_reference(tiny, inputs):
    """Eager forward with output_attentions, plus post-RoPE q/k rebuilt from projections and the family's rope."""
    model = tiny.model
    model.set_attn_implementation("eager")
    taps: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, attn in enumerate(tiny.decoder_attn):
        taps[i] = {}

        def pre(mod, args, kwargs, i=i):
            taps[i]["pe"] = kwargs["position_embeddings"]

        def proj(name, i=i):
            return lambda mod, args, out: taps[i].__setitem__(name, out)

        handles += [
            attn.register_forward_pre_hook(pre, with_kwargs=True),
            attn.q_proj.register_forward_hook(proj("q")),
            attn.k_proj.register_forward_hook(proj("k")),
        ]
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation("sdpa")
    rope = sys.modules[type(tiny.decoder_attn[0]).__module__].apply_rotary_pos_emb
    qk = {}
    for i, attn in enumerate(tiny.decoder_attn):
        b, t, _ = taps[i]["q"].shape
        q = taps[i]["q"].view(b, t, -1, attn.head_dim).transpose(1, 2)
        k = taps[i]["k"].view(b, t, -1, attn.head_dim).transpose(1, 2)
        qk[i] = rope(q, k, *taps[i]["pe"])
    return out, qk


def run_recorder(tiny, inputs, segments, qpos, **kw):
    """sdpa forward with the recorder installed on every decoder layer."""
    layers = list(range(len(tiny.decoder_attn)))
    rec = AttentionRecorder(tiny.decoder_attn, layers, keys=True, queries=True, **kw)
    rec.set_batch(segments, qpos)
    with rec, torch.no_grad():
        out = tiny.model(**inputs)
    return rec, out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["left", "right", "none"])
@pytest.mark.parametrize("blockwise", [False, True])
def test_recorder_matches_eager(tiny_factory, batch_factory, family, padding, blockwise):
    tiny = tiny_factory(family)
    layout = "even" if padding == "none" else "ragged"
    inputs, segments, qpos = batch_factory(tiny, "left" if padding == "none" else padding, layout)
    assert tiny.model.config.get_text_config()._attn_implementation == "sdpa"
    with torch.no_grad():
        plain = tiny.model(**inputs).logits
    eager, qk = eager_reference(tiny, inputs)
    kw = dict(blockwise_above=8, block_size=5) if blockwise else {}
    rec, out = run_recorder(tiny, inputs, segments, qpos, **kw)

    # the recorder returns the kernel's own output columns: bit-identical for head dims >= 12 on CPU
    # (test_attention_hook.py), for these head-dim-8 models SDPA rounds q.k differently at the wider width
    exact = tiny.decoder_attn[0].head_dim >= 16
    torch.testing.assert_close(out.logits, plain, atol=0 if exact else 1e-6, rtol=0 if exact else 1e-5)
    valid = segments != Segment.PAD
    torch.testing.assert_close(out.logits[valid], eager.logits[valid], atol=ATOL, rtol=RTOL)
    assert len(eager.attentions) == len(tiny.decoder_attn)
    assert sorted(rec.results) == list(range(len(tiny.decoder_attn)))
    for layer, attn in enumerate(eager.attentions):
        got = rec.results[layer]
        torch.testing.assert_close(got.share.double(), oracle_shares(attn, segments), atol=ATOL, rtol=RTOL, equal_nan=True)
        torch.testing.assert_close(got.rows.double(), oracle_rows(attn, qpos), atol=ATOL, rtol=RTOL, equal_nan=True)
        q_ref, k_ref = qk[layer]
        # pad positions carry garbage that differs between kernels (fully masked queries): compare real tokens
        keep = valid[:, None, :, None]
        assert got.keys.shape == k_ref.shape and got.queries.shape == q_ref.shape
        torch.testing.assert_close(got.keys * keep, k_ref * keep, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got.queries * keep, q_ref * keep, atol=ATOL, rtol=RTOL)
        assert got.share.dtype == torch.float32 and got.rows.dtype == torch.float32
        # rows of the share's sources sum to 1 over segments; a row with no answer is NaN
        share = got.share
        present = ~share.isnan().any(dim=-1)
        torch.testing.assert_close(share[present].sum(-1), torch.ones(int(present.sum())), atol=ATOL, rtol=0)
    if padding == "ragged" or layout == "ragged":
        assert rec.results[0].share[1, :, 1].isnan().all()  # row 1 has no answer tokens


def test_sliding_window_matches_eager(tiny_factory, batch_factory):
    tiny = tiny_factory("internvl", sliding_window=4)
    assert all(a.sliding_window == 4 for a in tiny.decoder_attn)
    inputs, segments, qpos = batch_factory(tiny, "left")
    eager, _ = eager_reference(tiny, inputs)
    rec, _ = run_recorder(tiny, inputs, segments, qpos, blockwise_above=8, block_size=5)
    for layer, attn in enumerate(eager.attentions):
        torch.testing.assert_close(rec.results[layer].rows.double(), oracle_rows(attn, qpos), atol=ATOL, rtol=RTOL, equal_nan=True)
        torch.testing.assert_close(rec.results[layer].share.double(), oracle_shares(attn, segments), atol=ATOL, rtol=RTOL, equal_nan=True)


def test_mask_from_segments_matches_hand_built():
    """The mask-less path (sdpa is_causal, flash 2-D mask): causal + key padding + window, by hand."""
    valid = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    pos = torch.tensor([[5, 3], [0, 3]])
    bias = MaskSource(None, valid, causal=True, window=2).apply_(torch.zeros(2, 1, 2, 6), pos)
    allowed = torch.zeros(2, 1, 2, 6, dtype=torch.bool)
    allowed[0, 0, 0, 4:6] = True  # query 5 sees keys 4, 5 (window 2)
    allowed[0, 0, 1, 2:4] = True  # query 3 sees keys 2, 3
    allowed[1, 0, 0, 0] = True
    allowed[1, 0, 1, 2:4] = True
    assert torch.equal(bias == 0, allowed) and torch.isinf(bias[~allowed]).all()
    bias_4d = MaskSource(allowed.new_ones(2, 1, 6, 6).tril() & valid[:, None, None, :], valid, True, None).apply_(
        torch.zeros(2, 1, 2, 6), pos)
    nowin = MaskSource(None, valid, causal=True, window=None).apply_(torch.zeros(2, 1, 2, 6), pos)
    assert torch.equal(bias_4d, nowin)


def _probs(*args, **kwargs) -> torch.Tensor:
    """The single block of exp_blocks, normalised to probabilities."""
    (_, expd), = _attn_math.exp_blocks(*args, **kwargs)
    return expd / expd.sum(-1, keepdim=True)


def test_float_mask_and_softcap_match_formula():
    """An additive float 4-D mask and a logit softcap give softmax(softcap(q.k * s) + mask), computed in float64."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    allowed = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    allowed[1, :, :, 0] = False
    allowed[1, :, 0, 0] = True  # keep row 0 of example 1 non-empty
    additive = torch.zeros(2, 1, 6, 6).masked_fill(~allowed, torch.finfo(torch.float32).min)
    pos = torch.tensor([[5, 2, 0], [1, 4, 5]])
    mask = MaskSource(additive, torch.ones(2, 6, dtype=torch.bool), True, None)
    probs = _probs(q, k, pos, scaling=0.3, mask=mask, block=3, softcap=2.0)
    kk = k.double().repeat_interleave(2, dim=1)  # head h uses kv head h // 2
    scores = 2.0 * torch.tanh(q.double() @ kk.transpose(-1, -2) * 0.3 / 2.0)
    ref = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    ref = torch.stack([ref[b][:, pos[b]] for b in range(2)])
    torch.testing.assert_close(probs.double(), ref, atol=1e-6, rtol=1e-6)
    bool_mask = MaskSource(allowed, torch.ones(2, 6, dtype=torch.bool), True, None)
    probs_bool = _probs(q, k, pos, scaling=0.3, mask=bool_mask, block=8, softcap=2.0)
    torch.testing.assert_close(probs_bool, probs, atol=1e-7, rtol=0)


class _AllocSpy(TorchDispatchMode):
    """Records the shape of every tensor an op allocates (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.shapes.append(tuple(t.shape))
        return out


def _square_allocs(shapes: list[tuple[int, ...]], seq: int) -> list[tuple[int, ...]]:
    """Allocated shapes with two or more dims of at least `seq`: anything [.., seq, seq]-like."""
    return [s for s in shapes if sum(d >= seq for d in s) >= 2]


@pytest.mark.parametrize(("kw", "shares"), [(dict(blockwise_above=8, block_size=5), True), ({}, False)])
def test_no_seq_by_seq_tensor(tiny_factory, batch_factory, monkeypatch, kw, shares):
    """The recorder's own work (widening, shares, blockwise rows) never allocates a [seq, seq] tensor; the spy is checked on a full map."""
    tiny = tiny_factory("llava")
    inputs, segments, qpos = batch_factory(tiny, "left")
    seq = segments.shape[1]
    spy = _AllocSpy()
    for name in ("widen_for_mass", "shares_from_mass", "attention_shares", "attention_rows"):
        orig = getattr(_attn_math, name)

        def spied(*a, _orig=orig, **k):
            with spy:
                return _orig(*a, **k)

        monkeypatch.setattr(attention_mod._attn_math, name, spied)
    rec = AttentionRecorder(tiny.decoder_attn, [0, 1], shares=shares, **kw)
    rec.set_batch(segments, qpos)
    with rec, torch.no_grad():
        tiny.model(**inputs)
    assert spy.shapes and len(rec.results) == 2
    assert _square_allocs(spy.shapes, seq) == []
    # control: asking for every query at once does allocate a [batch, head, seq, seq] map, and the spy sees it
    batch = segments.shape[0]
    q, k = torch.randn(batch, 4, seq, 8), torch.randn(batch, 2, seq, 8)
    control = _AllocSpy()
    with control:
        every = torch.arange(seq).expand(batch, seq)
        list(_attn_math.exp_blocks(q, k, every, scaling=1.0, mask=MaskSource(None, segments != 0, True, None), block=seq))
    # the [batch, head, seq, seq] scores (allocated folded as [batch, kv_head, group * seq, seq], then viewed)
    assert any(math.prod(shape) >= batch * 4 * seq * seq for shape in _square_allocs(control.shapes, seq))


def test_pass_through_and_uninstall(tiny_factory, batch_factory):
    """Vision-tower calls pass through, the registry is restored on exit, and misuse fails loudly."""
    from transformers.modeling_utils import AttentionInterface

    tiny = tiny_factory("llava")
    inputs, segments, qpos = batch_factory(tiny, "left")
    before = dict(AttentionInterface._global_mapping)
    rec = AttentionRecorder(tiny.decoder_attn, [1], rows=False)
    with pytest.raises(RuntimeError, match="set_batch"):
        with rec, torch.no_grad():
            tiny.model(**inputs)
    assert AttentionInterface._global_mapping == before
    rec.set_batch(segments, qpos)
    with rec, torch.no_grad():
        tiny.model(**inputs)
        with pytest.raises(RuntimeError, match="ran twice"):
            tiny.model(**inputs)
    assert list(rec.results) == [1] and rec.results[1].rows is None
    assert AttentionInterface._global_mapping == before
    rec.set_batch(segments[:, 1:], qpos.clamp_max(segments.shape[1] - 2))
    with pytest.raises(RuntimeError, match="decoder layer 1"), rec, torch.no_grad():
        tiny.model(**inputs)
    tiny.model.set_attn_implementation("eager")
    try:
        with pytest.raises(ValueError, match="'eager'"), rec:
            pass
    finally:
        tiny.model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="layers \\[5\\]"):
        AttentionRecorder(tiny.decoder_attn, [5])
    with pytest.raises(ValueError, match="query_positions"):
        rec.set_batch(segments, qpos[:1])
    with pytest.raises(ValueError, match="Segment codes"):
        rec.set_batch(segments.masked_fill(segments == 0, -1), qpos)


ADAPTER_FAMILIES = ["llava", "internvl", "internvl-tiled", "qwen2_vl", "qwen2_5_vl", "smolvlm", "smolvlm-split",
                    "idefics3", "llava_next", "llava_onevision", "gemma3", "qwen3_vl"]


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("family", ADAPTER_FAMILIES)
def test_adapter_inputs_match_eager_every_family(tiny_models, family, padding):
    """Through each family's own processor and adapter (batch 2, ragged): recorder shares == eager, 1e-5."""
    import copy

    import numpy as np
    from PIL import Image

    from probe.data.example import Example
    from probe.models.registry import adapter_for
    from probe.segments import last_prompt_index

    adapter = adapter_for(*tiny_models[family])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (64, 30))]
    examples = [Example("a", images[0], "What color is it?", answer="red"),
                Example("b", images[1], "이 그림에 무엇이 보입니까?", lang="ko")]
    batch = adapter.build_inputs(examples, padding)
    qpos = last_prompt_index(batch.segments)[:, None]
    layers = list(range(adapter.num_layers))
    rec = AttentionRecorder(adapter.attention_modules, layers)
    rec.set_batch(batch.segments, qpos)
    with rec, torch.no_grad():
        adapter.model(**batch.inputs)
    eager_model = copy.deepcopy(adapter.model)
    eager_model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = eager_model(**batch.inputs, output_attentions=True)
    for layer in layers:
        attn = eager.attentions[layer]
        torch.testing.assert_close(rec.results[layer].share.double(), oracle_shares(attn, batch.segments),
                                   atol=ATOL, rtol=RTOL, equal_nan=True)
        torch.testing.assert_close(rec.results[layer].rows.double(), oracle_rows(attn, qpos), atol=ATOL, rtol=RTOL,
                                   equal_nan=True)


def test_widen_scratch_equals_fresh_widening():
    """Reused wide buffers hold exactly what a fresh widening builds; under autograd no buffer is reused."""
    g = torch.Generator().manual_seed(0)
    segments = torch.tensor([[1, 2, 2, 4, 1, 3], [0, 1, 2, 2, 1, 1]])
    codes = _attn_math.mass_codes(segments)
    scratch: dict = {}
    first = None
    for _ in range(2):
        q, k, v = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
        fresh = _attn_math.widen_for_mass(q, k, v, segments, codes)
        with torch.no_grad():
            wide = _attn_math.widen_for_mass(q, k, v, segments, codes, scratch)
        for got, want in zip(wide, fresh):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        first = first or [t.data_ptr() for t in wide]
        assert [t.data_ptr() for t in wide] == first  # the second call wrote into the first call's buffers
    q.requires_grad_(True)
    wide = _attn_math.widen_for_mass(q, k, v, segments, codes, scratch)
    assert wide[0].grad_fn is not None and wide[0].data_ptr() != first[0]


def test_recorder_under_autograd_keeps_gradients(tiny_factory, batch_factory):
    """With the recorder on every layer, parameter gradients equal those of the plain forward (1e-5)."""
    tiny = tiny_factory("llava")
    inputs, segments, qpos = batch_factory(tiny, "left")
    params = [a.q_proj.weight for a in tiny.decoder_attn] + [a.v_proj.weight for a in tiny.decoder_attn]
    valid = (segments != Segment.PAD)[..., None]

    def grads(recorder: AttentionRecorder | None):
        tiny.model.zero_grad()
        if recorder is None:
            out = tiny.model(**inputs)
        else:
            with recorder:
                out = tiny.model(**inputs)
        (out.logits * valid).square().mean().backward()
        return [p.grad.clone() for p in params]

    rec = AttentionRecorder(tiny.decoder_attn, list(range(len(tiny.decoder_attn))))
    rec.set_batch(segments, qpos)
    try:
        plain, recorded = grads(None), grads(rec)
    finally:
        tiny.model.zero_grad(set_to_none=True)
    for a, b in zip(recorded, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in plain)
    ref, _ = run_recorder(tiny, inputs, segments, qpos)
    for layer, got in rec.results.items():
        torch.testing.assert_close(got.share, ref.results[layer].share, atol=1e-6, rtol=1e-6, equal_nan=True)
