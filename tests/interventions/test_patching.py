"""Activation patching against known answers: full-position patches recover the clean run exactly, patches that
cannot reach the answer change nothing, and patching a run into itself is bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions import ActivationPatch, ablate_examples, patch_sweep, record_activations
from interventions.patching import PATCH_SITES
from interventions.score import answer_logprob

KEYS = [(s, i) for s in ("resid", "attn", "mlp") for i in range(3)] + [("projector", None)]


def test_patching_a_run_into_itself_is_bit_identical(pair, batch, logits):
    adapter = pair[0]
    acts, base = record_activations(adapter, batch, KEYS)
    for site in PATCH_SITES:
        for seg in ("visual", "text", "last_prompt"):
            if site == "projector" and seg != "visual":
                continue
            patch = ActivationPatch(adapter, acts, site, [0, 2], seg)
            patch.set_batch(batch)
            with patch:
                assert torch.equal(logits(adapter, batch), base), (site, seg)


def test_full_resid_patch_is_the_clean_run(pair, examples, logits):
    """Input -> input: after patching every position's residual at any layer, the rest of the model sees only clean
    values, so the logits are the clean run's exactly; the projector patch does the same for a blank image."""
    adapter = pair[0]
    clean = adapter.build_inputs(examples, padding_side="right")
    blank = adapter.build_inputs(ablate_examples(examples, "blank"), padding_side="right")
    acts, clean_logits = record_activations(adapter, clean, KEYS)
    valid = blank.segments != 0  # pad positions are outside every segment
    assert not torch.allclose(logits(adapter, blank)[valid], clean_logits[valid])
    for patch in (ActivationPatch(adapter, acts, "resid", [1], "all"), ActivationPatch(adapter, acts, "projector")):
        patch.set_batch(blank)
        with patch:
            assert torch.equal(logits(adapter, blank)[valid], clean_logits[valid])


def test_sweep_effects_have_known_values(pair, examples):
    """Model -> model (donor = clean, recipient = corrupt)."""
    clean, corrupt = pair[1], pair[0]
    ds = patch_sweep(clean, corrupt, examples, sites=("resid", "attn"), segments=("visual", "text", "last_prompt"),
                     batch_size=4, progress=False)
    assert ds["effect"].dims == ("site", "layer", "segment")
    assert np.all(np.isfinite(ds["effect"].values))
    # the last layer's visual residuals feed nothing that reaches the answer positions: no effect at all
    np.testing.assert_allclose(ds["patched"].sel(site="resid", layer=2, segment="visual"), ds["corrupt"], rtol=0, atol=1e-9)
    # input -> input on one model: patching the projector output of the real image into the blank run = full recovery
    adapter = pair[0]
    blank = ablate_examples(examples, "blank")
    io = patch_sweep(adapter, adapter, examples, blank, sites=("resid",), layers=[0], batch_size=4, progress=False)
    np.testing.assert_allclose(float(io["projector_effect"]), 1.0, atol=1e-9)
    np.testing.assert_allclose(io["projector"], io["clean"], atol=1e-9)


def test_answer_logprob_is_the_hand_sum():
    logits = torch.randn(1, 4, 5, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 2, 4]])
    lp = torch.log_softmax(logits, -1)
    expected = lp[0, 1, 2] + lp[0, 2, 4]
    torch.testing.assert_close(answer_logprob(logits, labels)[0], expected)


def test_answer_logprob_ignores_cut_scores_off_the_answer():
    # contrastive decoding's plausibility cut-off leaves -inf scores; off the answer (and at the -100 labels'
    # placeholder token) they must not turn the sum into NaN (-inf * 0)
    logits = torch.randn(1, 4, 5, dtype=torch.float64)
    logits[0, 0, 0] = float("-inf")  # position 0 predicts no answer token; token 0 is where -100 is gathered
    labels = torch.tensor([[-100, -100, 2, 4]])
    lp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(answer_logprob(logits, labels)[0], lp[0, 1, 2] + lp[0, 2, 4])
    logits[0, 1, 2] = float("-inf")  # the answer token itself cut: the answer is impossible
    assert answer_logprob(logits, labels)[0] == float("-inf")


def test_layout_mismatch_and_bad_segment(pair, examples):
    adapter = pair[0]
    with pytest.raises(ValueError, match="segment"):
        ActivationPatch(adapter, {("projector", None): torch.zeros(1)}, "projector", segment="text")
    with pytest.raises(ValueError, match="align"):
        patch_sweep(adapter, adapter, examples, examples[:2], progress=False)
