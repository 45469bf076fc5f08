"""Attention edits under SDPA vs an eager reference that applies the same edit to the full attention logits."""

from __future__ import annotations

import pytest
import torch

from interventions import VAR, Boost, Knockout, Temperature, compose
from probe.capture.attention_hook import attach
from probe.segments import Segment, last_prompt_index

TOL = dict(atol=1e-5, rtol=1e-5)


def _eager_reference(layers, heads, query_rows, edit_fn):
    """An attention hook computing the full eager softmax(QK^T·s + mask) V itself (the kernel never runs), with
    `edit_fn` applied to the full logits [seq] of each chosen (example, head, query) at the chosen layers.
    Written independently of interventions.attention (no row gathering, no head subsetting)."""

    def hook(call, proceed):
        query, key, value, mask = call.query, call.key, call.value, call.attention_mask
        b, h, t, d = query.shape
        groups = h // key.shape[1]
        k = key.repeat_interleave(groups, 1).double()
        v = value.repeat_interleave(groups, 1).double()
        scores = (query.double() @ k.transpose(-1, -2)) * call.scaling
        if mask is None:
            scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        elif mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.double()
        probs = torch.softmax(scores, -1)
        if call.layer in layers:
            for ex in range(b):
                for qpos in query_rows[ex]:
                    for head in heads:
                        probs[ex, head, qpos] = edit_fn(scores[ex, head, qpos], ex, call.layer, head)
        return (probs @ v).to(query.dtype).transpose(1, 2).contiguous(), None

    return hook


def _run_reference(logits, adapter, batch, layers, heads, sources, edit_fn):
    segs = batch.segments
    rows = []
    for ex in range(segs.shape[0]):
        r = set()
        if "last_prompt" in sources:
            r.add(int(last_prompt_index(segs)[ex]))
        if "answer" in sources:
            r |= set((segs[ex] == Segment.ANSWER).nonzero().flatten().tolist())
        if "text" in sources:
            r |= set((segs[ex] == Segment.TEXT).nonzero().flatten().tolist())  # prompt text only (probe.vocab)
        rows.append(sorted(r))
    with attach(adapter.attention_modules, _eager_reference(set(layers), heads, rows, edit_fn)):
        return logits(adapter, batch)


def test_reference_without_edit_is_sdpa(pair, batch, logits):
    adapter = pair[0]
    same = _run_reference(logits, adapter, batch, (), (), ("last_prompt",), None)
    torch.testing.assert_close(same.float(), logits(adapter, batch), **TOL)


def _visual(batch, ex):
    return batch.segments[ex] == Segment.VISUAL


@pytest.mark.parametrize("sources", [("last_prompt",), ("last_prompt", "answer"), ("text",)])
def test_boost_matches_eager_reference(pair, batch, logits, sources):
    adapter = pair[0]
    alpha, layers, heads = 0.5, (1, 2), (0, 3)

    def ref(scores, ex, layer, head):
        vis = _visual(batch, ex)
        s = scores.clone()
        s[vis] = s[vis] + alpha * s[vis].abs()
        return torch.softmax(s, -1)

    expected = _run_reference(logits, adapter, batch, layers, heads, sources, ref)
    edit = Boost(adapter, alpha=alpha, layers=layers, heads=heads, queries=sources)
    with edit:
        edit.set_batch(batch)
        got = logits(adapter, batch)
    torch.testing.assert_close(got, expected.float(), **TOL)
    assert not torch.allclose(got, logits(adapter, batch), atol=1e-4), "the edit should change the logits"


def test_boost_defaults_are_pai(pair):
    b = Boost(pair[0])
    assert b.alpha == 0.2 and b.layers == (2,) and b.queries == ("last_prompt", "answer")


def test_temperature_and_knockout_match_eager_reference(pair, batch, logits):
    adapter = pair[0]
    scale = 2.5

    def ref_t(scores, ex, layer, head):
        vis = _visual(batch, ex)
        s = scores.clone()
        s[vis] = s[vis] * scale
        return torch.softmax(s, -1)

    def ref_k(scores, ex, layer, head):
        s = scores.clone()
        s[_visual(batch, ex)] = float("-inf")
        return torch.softmax(s, -1)

    for edit, ref in ((Temperature(adapter, scale=scale, layers=(0, 2)), ref_t), (Knockout(adapter, layers=(0, 2)), ref_k)):
        expected = _run_reference(logits, adapter, batch, (0, 2), range(adapter.num_heads), ("last_prompt", "answer"), ref)
        with edit:
            edit.set_batch(batch)
            got = logits(adapter, batch)
        torch.testing.assert_close(got, expected.float(), **TOL)


def test_var_matches_eager_reference(pair, batch, logits):
    adapter = pair[0]
    p, rho, summ = 0.6, 0.5, 0.0
    g = torch.Generator().manual_seed(0)
    # sinks: a few visual tokens and the first text token of each example
    sinks = (torch.rand(batch.segments.shape, generator=g) < 0.2) & (batch.segments == Segment.VISUAL)
    sinks[:, 0] = True

    def ref(scores, ex, layer, head):
        probs = torch.softmax(scores, -1)
        vis, sink = _visual(batch, ex), sinks[ex]
        vis_mass = probs[vis].sum()
        if probs[vis & sink].sum() > rho * vis_mass or vis_mass < summ:
            return probs
        out = probs.clone()
        budget = p * probs[sink].sum()
        out[sink] = probs[sink] * (1 - p)
        recv = vis & ~sink
        out[recv] += budget * probs[recv] / probs[recv].sum()
        return out

    expected = _run_reference(logits, adapter, batch, (1, 2), range(adapter.num_heads), ("last_prompt", "answer"), ref)
    edit = VAR(adapter, p=p, rho=rho, summ=summ, layers=(1, 2))
    edit.set_sinks(sinks)
    with edit:
        edit.set_batch(batch)
        got = logits(adapter, batch)
    torch.testing.assert_close(got, expected.float(), **TOL)
    assert not torch.allclose(got, logits(adapter, batch), atol=1e-5)


def test_var_detection_finds_a_planted_sink(examples, logits):
    """A massive value planted in dim 5 of one text token's embedding makes that token the only one over tau at
    layer 0's input: on-the-fly detection must then equal VAR given that sink mask."""
    from probe.models import adapter_for
    from probe.testing import tiny_llava

    adapter = adapter_for(*tiny_llava(seed=2, text_layers=2, text_dim=64, vision_dim=32))
    batch = adapter.build_inputs(examples, padding_side="right")
    sink_tok = int(batch.inputs["input_ids"][0][batch.segments[0] == Segment.TEXT][0])  # a text token of row 0
    with torch.no_grad():
        adapter.input_embeddings.weight[sink_tok, 5] = 50.0
    given = VAR(adapter, p=0.6, summ=0.0, layers=(0,))
    given.set_sinks(batch.inputs["input_ids"] == sink_tok)
    detected = VAR(adapter, p=0.6, summ=0.0, layers=(0,), sink_dims=(5,), tau=6.0)
    out = []
    for edit in (given, detected):
        with edit:
            edit.set_batch(batch)
            out.append(logits(adapter, batch))
    assert torch.equal(detected._detected[0], batch.inputs["input_ids"] == sink_tok)
    torch.testing.assert_close(out[1], out[0], atol=0, rtol=0)
    assert not torch.allclose(out[0], logits(adapter, batch), atol=1e-5)


def test_var_detects_sinks_on_the_fly(pair, batch, logits):
    """With sink dims and a tiny tau every token is a sink: nothing is left to receive, so nothing changes
    beyond float noise; with tau above every |h/rms| nothing is a sink: the output is SDPA's own rows."""
    adapter = pair[0]
    base = logits(adapter, batch)
    for tau in (1e-9, 1e9):
        edit = VAR(adapter, p=0.6, sink_dims=(0, 1), tau=tau, summ=0.0)
        with edit:
            edit.set_batch(batch)
            got = logits(adapter, batch)
        torch.testing.assert_close(got, base, atol=1e-5, rtol=1e-5)
        assert set(edit._detected) == set(edit.layers)


@pytest.mark.parametrize("make", [
    lambda a: Boost(a, alpha=0.0),
    lambda a: Temperature(a, scale=1.0),
    lambda a: Knockout(a, layers=()),
    lambda a: VAR(a, p=0.0, sink_dims=(0,)),
    lambda a: VAR(a, p=0.6, sink_dims=()),  # no sink dimensions found (find_sink_dims empty): nothing to move
])
def test_noop_settings_are_bit_identical(pair, batch, logits, make):
    adapter = pair[0]
    base = logits(adapter, batch)
    edit = make(adapter)
    with edit:
        edit.set_batch(batch)
        assert torch.equal(logits(adapter, batch), base)


def test_edits_compose_and_uninstall(pair, batch, logits):
    adapter = pair[0]
    base = logits(adapter, batch)
    impl = adapter.text_config._attn_implementation
    both = compose(Boost(adapter, alpha=0.3), Knockout(adapter, layers=(0,)))
    with both:
        both.set_batch(batch)
        edited = logits(adapter, batch)
    assert not torch.allclose(edited, base, atol=1e-4)
    assert adapter.text_config._attn_implementation == impl
    assert torch.equal(logits(adapter, batch), base)


def test_edit_without_batch_says_so(pair, batch, logits):
    with Boost(pair[0]), pytest.raises(RuntimeError, match="set_batch"):
        logits(pair[0], batch)


def test_bad_layers_and_heads_raise(pair):
    with pytest.raises(ValueError, match="layers"):
        Boost(pair[0], layers=(7,))
    with pytest.raises(ValueError, match="heads"):
        Knockout(pair[0], heads=(9,))
    with pytest.raises(ValueError, match="query source"):
        Knockout(pair[0], queries=("visual",))


def test_image_centric_heads_rule():
    import numpy as np
    import xarray as xr

    from interventions.attention import image_centric_heads

    # layer 0: head 0 visual 0.5 with sinks 0.1 (kept), head 1 visual 0.5 with sinks 0.4 (sink-dominated);
    # layer 1: head 0 visual 0.1 (too little), head 1 visual 0.3, sinks 0.15 (exactly rho: kept)
    vis = np.array([[0.5, 0.5], [0.1, 0.3]])
    sink = np.array([[0.1, 0.4], [0.0, 0.15]])
    dims = ("example", "layer", "head", "source")
    shares = xr.Dataset({"visual_share": (dims, vis[None, :, :, None].repeat(2, 0)),
                         "sink_share": (dims, sink[None, :, :, None].repeat(2, 0))},
                        coords={"layer": [0, 1], "head": [0, 1], "source": ["last_prompt"]})
    assert image_centric_heads(shares) == {0: [0], 1: [1]}


def test_adaptvis_picks_the_scale_by_confidence(pair, batch, logits):
    """Threshold 0 -> every example is confident -> weight2 everywhere = Temperature(weight2); threshold 1 -> weight1."""
    from interventions import AdaptVis

    adapter = pair[0]
    for threshold, weight in ((0.0, 1.7), (1.0, 0.6)):
        ref = Temperature(adapter, scale=weight, layers=(1, 2))
        ref.set_batch(batch)
        with ref:
            expected = logits(adapter, batch)
        gate = AdaptVis(adapter, weight1=0.6, weight2=1.7, threshold=threshold, layers=(1, 2))
        gate.set_batch(batch)
        with gate:
            got = logits(adapter, batch)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    base = logits(adapter, batch)
    noop = AdaptVis(adapter, weight1=1.0, weight2=1.0)
    noop.set_batch(batch)
    with noop:
        assert torch.equal(logits(adapter, batch), base)
