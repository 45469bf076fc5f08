"""Input-side and visual-token ablations: hand-built known answers, seeded reproducibility, no-op = identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interventions import VisualTokenAblation, ablate_examples, diffusion_noise, visual_token_mean
from interventions.ablation import mean_image, open_image, shuffle_patches
from probe.data.example import Example


def test_image_ablations_known_answers(examples):
    imgs = [np.asarray(open_image(e), dtype=np.float64) for e in examples]
    blank = ablate_examples(examples, "blank")
    assert all(np.asarray(e.image).max() == 0 and e.condition == "blank" for e in blank)
    mean = ablate_examples(examples, "mean")
    np.testing.assert_allclose(np.asarray(mean[0].image, dtype=np.float64), np.mean(imgs, 0), atol=0.5)
    noise = ablate_examples(examples, "noise", seed=3)
    assert np.asarray(noise[0].image).std() > 50
    assert np.array_equal(np.asarray(noise[0].image), np.asarray(ablate_examples(examples, "noise", seed=3)[0].image))
    other = ablate_examples(examples, "other")
    for ex, o in zip(examples, other):
        assert not np.array_equal(np.asarray(o.image), np.asarray(open_image(ex)))


def test_shuffle_is_a_permutation_of_patches():
    arr = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    im = Image.fromarray(arr)
    import random

    out = np.asarray(shuffle_patches(im, 4, random.Random(0)))
    patches = lambda a: sorted(a[r:r + 4, c:c + 4].tobytes() for r in range(0, 16, 4) for c in range(0, 16, 4))  # noqa: E731
    assert patches(out) == patches(arr) and not np.array_equal(out, arr)


def test_mean_image_of_two():
    a, b = Image.new("RGB", (4, 4), (0, 100, 200)), Image.new("RGB", (4, 4), (100, 200, 0))
    assert np.asarray(mean_image([a, b], (4, 4)))[0, 0].tolist() == [50, 150, 100]


def test_diffusion_noise_follows_the_schedule():
    x = torch.ones(2000, 8)
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    ab = torch.cumprod(1 - betas, 0)[500]
    y = diffusion_noise(x, 500, generator=torch.Generator().manual_seed(0))
    assert abs(float(y.mean()) - float(ab.sqrt())) < 0.01
    assert abs(float(y.std()) - float((1 - ab).sqrt())) < 0.01


def test_visual_token_ablation(pair, batch, examples, logits):
    adapter = pair[0]
    base = logits(adapter, batch)
    with VisualTokenAblation(adapter, "zero", fraction=0.0):
        assert torch.equal(logits(adapter, batch), base)
    seen = {}
    visual = batch.segments == 2

    def grab(module, args, kwargs):  # the decoder's input at visual positions
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[:2] == visual.shape:
            seen["x"] = h[visual].clone()

    handle = adapter.decoder_layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with VisualTokenAblation(adapter, "zero") as ablation:
            ablation.set_batch(batch)
            zeroed = logits(adapter, batch)
        assert torch.count_nonzero(seen["x"]) == 0
        mean = visual_token_mean(adapter, examples)
        with VisualTokenAblation(adapter, "mean", mean=mean) as ablation:
            ablation.set_batch(batch)
            logits(adapter, batch)
        assert torch.equal(seen["x"], mean.expand_as(seen["x"]))
        with VisualTokenAblation(adapter, "noise", fraction=0.5, seed=1) as ablation:
            ablation.set_batch(batch)
            a = logits(adapter, batch)
        with VisualTokenAblation(adapter, "noise", fraction=0.5, seed=1) as ablation:
            ablation.set_batch(batch)
            assert torch.equal(logits(adapter, batch), a)
    finally:
        handle.remove()
    assert not torch.allclose(zeroed, base)
    with pytest.raises(ValueError, match="mean vector"):
        VisualTokenAblation(adapter, "mean")


def test_example_without_image_is_named():
    with pytest.raises(ValueError, match="'x'"):
        ablate_examples([Example(id="x", image=None, prompt="p", answer="a")], "blank")


def test_visual_token_ablation_in_decoder_order_on_anyres():
    """LLaVA-NeXT's projector emits padded tile rows the decoder never sees (unpadding drops them): the seeded
    fraction is drawn over the decoder's visual tokens and the mean is theirs. Oracle: the decoder's own input."""
    from probe.models import adapter_for
    from probe.testing import tiny_llava_next

    adapter = adapter_for(*tiny_llava_next(seed=0))
    rng = np.random.default_rng(0)
    examples = [Example(id=f"w{i}", image=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                        prompt="What colour?", answer=None) for i, (h, w) in enumerate([(16, 44), (40, 16)])]
    batch = adapter.build_inputs(examples, padding_side="right")
    visual = batch.segments == 2
    seen = {}

    def grab(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        seen["x"] = h[visual].clone()

    handle = adapter.decoder_layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**batch.inputs)
            clean = seen["x"]
            projected = adapter.run_to_projector(batch).projector_out
            assert projected.reshape(-1, projected.shape[-1]).shape[0] > clean.shape[0]  # the case: rows dropped
            with VisualTokenAblation(adapter, "zero", fraction=0.5, seed=3) as ablation:
                ablation.set_batch(batch)
                adapter.model(**batch.inputs)
            chosen = torch.rand(clean.shape[0], generator=torch.Generator().manual_seed(3)) < 0.5
            assert 0 < int(chosen.sum()) < len(chosen)
            assert torch.count_nonzero(seen["x"][chosen]) == 0
            assert torch.equal(seen["x"][~chosen], clean[~chosen])
            mean = visual_token_mean(adapter, examples)
        torch.testing.assert_close(mean, clean.double().mean(0).float(), atol=1e-6, rtol=1e-5)
    finally:
        handle.remove()
