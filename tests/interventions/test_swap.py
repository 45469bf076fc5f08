"""Component swaps: every component swapped = the donor exactly; a self-swap and leaving = the recipient exactly."""

from __future__ import annotations

import pytest
import torch

from interventions import ComponentSwap, compose, Knockout
from interventions.swap import expand_components


def test_swapping_every_component_gives_the_donor(pair, batch, logits):
    recipient, donor = pair
    mine, theirs = logits(recipient, batch), logits(donor, batch)
    assert not torch.allclose(mine, theirs)
    with ComponentSwap(recipient, donor, "all"):
        assert torch.equal(logits(recipient, batch), theirs)
    assert torch.equal(logits(recipient, batch), mine)


def test_partial_swaps_change_the_output_and_undo_exactly(pair, batch, logits):
    recipient, donor = pair
    mine, theirs = logits(recipient, batch), logits(donor, batch)
    for comps in (["projector"], ["vision"], ["embed"], "lm.layer.1:3"):
        with ComponentSwap(recipient, donor, comps):
            got = logits(recipient, batch)
        assert not torch.allclose(got, mine) and not torch.allclose(got, theirs), comps
    assert torch.equal(logits(recipient, batch), mine)


def test_self_swap_is_bit_identical(pair, batch, logits):
    recipient = pair[0]
    mine = logits(recipient, batch)
    swap = ComponentSwap(recipient, recipient, "all")
    assert swap.is_noop
    with swap:
        assert torch.equal(logits(recipient, batch), mine)


def test_swap_composes_with_an_attention_edit(pair, batch, logits):
    recipient, donor = pair
    knock = Knockout(donor, layers=(0, 1, 2))
    knock.set_batch(batch)
    with knock:
        expected = logits(donor, batch)
    knock_r = Knockout(recipient, layers=(0, 1, 2))
    both = compose(ComponentSwap(recipient, donor, "all"), knock_r)
    with both:
        both.set_batch(batch)
        assert torch.equal(logits(recipient, batch), expected)


def test_layer_ranges_and_bad_names(pair):
    recipient = pair[0]
    assert expand_components(recipient, ["lm.layer.1:", "projector"]) == ["lm.layer.1", "lm.layer.2", "projector"]
    with pytest.raises(ValueError, match="outside"):
        expand_components(recipient, "lm.layer.2:9")
    with pytest.raises(KeyError, match="no component 'projektor'"):
        ComponentSwap(recipient, pair[1], ["projektor"])


def test_shape_mismatch_is_one_clear_error(pair):
    from probe.models import adapter_for
    from probe.testing import tiny_llava

    other = adapter_for(*tiny_llava(seed=0, text_layers=3, text_dim=32, vision_dim=32))
    with pytest.raises(ValueError, match="projector"):
        ComponentSwap(pair[0], other, ["projector"])
