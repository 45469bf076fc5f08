"""Contrastive decoding vs the published formulas, computed by hand from separate forward passes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from interventions import Boost, ContrastiveDecoding, contrast_scores, contrastive_generate, diffusion_noise


def test_scores_match_vcd_and_pai_formulas():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 11, generator=g) * 3, torch.randn(3, 11, generator=g) * 3
    alpha, beta = 1.0, 0.1
    # VCD's code: raw logits, cut-off on raw logits
    vcd = ((1 + alpha) * a - alpha * b).masked_fill(a < math.log(beta) + a.max(-1, keepdim=True).values, float("-inf"))
    torch.testing.assert_close(torch.softmax(contrast_scores(a, b, alpha, beta), -1), torch.softmax(vcd, -1))
    # PAI's CFG: gamma * (s - u) + u on log-softmax, cut-off log(0.1)
    gamma = 1.1
    s, u = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    pai = (gamma * (s - u) + u).masked_fill(s < math.log(0.1) + s.max(-1, keepdim=True).values, float("-inf"))
    torch.testing.assert_close(contrast_scores(a, b, gamma - 1, 0.1), pai)
    # cut-off only keeps the image distribution on the kept tokens
    cut = contrast_scores(a, None, 0.0, 0.5)
    keep = torch.softmax(a, -1) >= 0.5 * torch.softmax(a, -1).max(-1, keepdim=True).values
    assert torch.equal(cut.isfinite(), keep)


def test_vcd_forward_is_the_formula_on_two_passes(pair, batch, logits):
    adapter = pair[0]
    real = logits(adapter, batch)
    noisy_inputs = dict(batch.inputs, pixel_values=diffusion_noise(batch.inputs["pixel_values"], 500,
                                                                   generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        noisy = adapter.model(**noisy_inputs).logits
    with ContrastiveDecoding(adapter, alpha=1.0, beta=0.1, contrast="noise", seed=4):
        got = logits(adapter, batch)
    torch.testing.assert_close(got, contrast_scores(real, noisy, 1.0, 0.1), atol=1e-5, rtol=1e-5)
    assert torch.equal(logits(adapter, batch), real), "uninstalled"


def test_text_prior_pass_is_the_prompt_without_image(pair, batch, examples, logits):
    """Each row's text-only pass equals a one-row forward of that row's tokens with the image tokens removed."""
    adapter = pair[0]
    alpha = 0.5
    with ContrastiveDecoding(adapter, alpha=alpha, beta=0.0, contrast="no_image"):
        got = logits(adapter, batch)
    real = logits(adapter, batch)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    for row in range(ids.shape[0]):
        keep = (ids[row] != adapter.image_token_id) & mask[row].bool()
        with torch.no_grad():
            text = adapter.model(input_ids=ids[row][keep][None], attention_mask=torch.ones(1, int(keep.sum()))).logits[0]
        expected = contrast_scores(real[row][keep], text, alpha, 0.0)
        torch.testing.assert_close(got[row][keep], expected, atol=1e-5, rtol=1e-5)


def test_noop_is_bit_identical_and_cutoff_only_needs_no_second_pass(pair, batch, logits):
    adapter = pair[0]
    real = logits(adapter, batch)
    with ContrastiveDecoding(adapter, alpha=0.0, beta=0.0):
        assert torch.equal(logits(adapter, batch), real)
    calls = []
    handle = adapter.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with ContrastiveDecoding(adapter, alpha=0.0, beta=0.2):
            logits(adapter, batch)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_cutoff_ranking_has_no_nan(pair, examples):
    # a strict cut-off (beta 0.9) leaves -inf on most tokens; ranking gave NaN for every candidate (argmax then took
    # the first) before answer_logprob's fix. Oracle: the cut scores summed by hand over the answer tokens.
    from interventions import rank_answers
    from interventions.contrastive import contrast_scores

    adapter = pair[0]
    choices = [sorted({e.answer for e in examples})] * len(examples)
    _, scores = rank_answers(adapter, examples, choices, ContrastiveDecoding(adapter, alpha=0.0, beta=0.9), batch_size=3)
    assert not np.isnan(np.concatenate(scores)).any()
    expected = []
    for answer in choices[0]:
        b = adapter.build_inputs([replace(examples[0], answer=answer)], padding_side="right")
        with torch.no_grad():
            cut = torch.log_softmax(contrast_scores(adapter.model(**b.inputs).logits, None, 0.0, 0.9).double(), -1)
        pos = (b.labels[0, 1:] != -100).nonzero().flatten()
        expected.append(sum(float(cut[0, p, b.labels[0, p + 1]]) for p in pos))
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)


def test_boost_paused_in_the_contrast_pass(pair, batch, logits):
    adapter = pair[0]
    boost = Boost(adapter, alpha=0.5, layers=0)
    boost.set_batch(batch)
    with boost:
        boosted = logits(adapter, batch)
    cd = ContrastiveDecoding(adapter, alpha=0.5, beta=0.0, contrast="no_image", plain_contrast=(boost,))
    with ContrastiveDecoding(adapter, alpha=0.5, beta=0.0, contrast="no_image"):
        real_text = logits(adapter, batch)  # contrast of the unboosted image pass with the text pass
    with boost, cd:
        got = logits(adapter, batch)
    plain = logits(adapter, batch)
    # recover the text pass's log-probs from the unboosted run, then recombine with the boosted image pass
    text_lp = (1.5 * torch.log_softmax(plain, -1) - real_text) / 0.5
    expected = 1.5 * torch.log_softmax(boosted, -1) - 0.5 * text_lp
    valid = batch.segments != 0
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-4, rtol=1e-4)


def test_generation_without_contrast_is_greedy(pair, examples):
    adapter = pair[0]
    plain = contrastive_generate(adapter, examples[:2], max_new_tokens=4)
    with_noop = contrastive_generate(adapter, examples[:2], ContrastiveDecoding(adapter, alpha=0.0, beta=0.0), max_new_tokens=4)
    assert plain == with_noop
    from dataclasses import replace

    batch = adapter.build_inputs([replace(examples[0], answer=None)], padding_side="left")
    seq = adapter.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
    tok = adapter.processor.tokenizer
    expected = tok.decode(seq[0, batch.inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert plain[0] == expected
    vcd = contrastive_generate(adapter, examples[:1], ContrastiveDecoding(adapter, alpha=1.0, beta=0.1), max_new_tokens=4)
    assert isinstance(vcd[0], str)


def test_bad_settings():
    with pytest.raises(ValueError, match="contrast"):
        ContrastiveDecoding(None, contrast="blur")
    with pytest.raises(ValueError, match="beta"):
        ContrastiveDecoding(None, beta=1.5)
