"""Two tiny LLaVAs of one architecture (different seeds): a donor/recipient pair, and a batch with answers."""

from __future__ import annotations

import pytest
import torch

from probe.data.manifest import read_manifest


@pytest.fixture(scope="session")
def pair():
    """(recipient, donor) adapters: tiny LLaVAs, seeds 0 and 1, same shapes, SDPA attention, float32."""
    from probe.models import adapter_for
    from probe.testing import tiny_llava

    out = []
    for seed in (0, 1):
        model, processor = tiny_llava(seed=seed, text_layers=3, text_dim=64, vision_dim=32)
        out.append(adapter_for(model, processor))
    return tuple(out)


@pytest.fixture(scope="session")
def examples(colour_manifest):
    """Six examples with answers and prompts of different lengths (so batches are padded)."""
    return [e for e in read_manifest(colour_manifest) if e.answer is not None][:6]


@pytest.fixture()
def batch(pair, examples):
    return pair[0].build_inputs(examples, padding_side="right")


def _logits(adapter, batch) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(**batch.inputs).logits


@pytest.fixture(scope="session")
def logits():
    """adapter, batch -> the model's logits (no grad)."""
    return _logits
