"""probe.models.swap: parameters re-pointed between two checkpoints of one architecture, and put back."""

from __future__ import annotations

import pytest
import torch

from probe.models import adapter_for
from probe.models.swap import QK, ParameterSwap, expand_components, parameters_of, query_key_parameters, swapped
from probe.testing.families import tiny_llava


def _pair():
    kw = dict(text_layers=3, text_dim=32, heads=2, kv_heads=1, vision_layers=1, vision_dim=32, vision_heads=2)
    return adapter_for(*tiny_llava(0, **kw)), adapter_for(*tiny_llava(1, **kw))


def _inputs(adapter):
    from PIL import Image

    from probe.data.example import Example

    return adapter.build_inputs([Example("a", Image.new("RGB", (32, 32), (200, 30, 30)), "What color?", "red")])


def test_qk_swap_moves_exactly_the_query_and_key_projections_and_puts_them_back() -> None:
    recipient, donor = _pair()
    before = {q: p.detach().clone() for q, p in recipient.base_model.named_parameters()}
    qk = query_key_parameters(recipient)
    assert qk and all((".q_proj." in q or ".k_proj." in q) for q in qk)
    assert len([q for q in qk if q.endswith("weight")]) == 2 * recipient.num_layers
    donors = dict(donor.base_model.named_parameters())
    with swapped(recipient, donor, QK) as names:
        assert names == [QK]
        for q, p in recipient.base_model.named_parameters():
            expected = donors[q] if q in qk else before[q]
            assert torch.equal(p, expected), q
    assert all(torch.equal(p, before[q]) for q, p in recipient.base_model.named_parameters())


def test_swapping_everything_gives_the_donors_logits_exactly() -> None:
    recipient, donor = _pair()
    batch = _inputs(recipient)
    with torch.no_grad():
        want = donor.model(**batch.inputs).logits
        own = recipient.model(**batch.inputs).logits
        with swapped(recipient, donor, "all"):
            got = recipient.model(**batch.inputs).logits
        after = recipient.model(**batch.inputs).logits
    assert torch.equal(got, want) and torch.equal(after, own) and not torch.equal(own, want)


def test_names_expand_and_bad_names_are_refused() -> None:
    recipient, donor = _pair()
    assert expand_components(recipient, ["lm.layer.1:", "projector", QK]) == ["lm.layer.1", "lm.layer.2", "projector", QK]
    assert set(parameters_of(recipient, "lm.layer.0:3")) >= set(query_key_parameters(recipient))
    with pytest.raises(ValueError, match="outside the decoder"):
        expand_components(recipient, "lm.layer.2:9")
    with pytest.raises(KeyError, match="no component 'nope'"):
        expand_components(recipient, "nope")
    other = adapter_for(*tiny_llava(0, text_layers=3, text_dim=64))
    with pytest.raises(ValueError, match="same architecture needed|in the donor"):
        ParameterSwap(recipient, other, "projector")
