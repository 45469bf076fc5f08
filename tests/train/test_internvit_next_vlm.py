"""InternViT-Next inside transformers' InternVLForConditionalGeneration and probe's InternVL adapter/capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probe.capture import CaptureSpec
from probe.data.example import Example
from probe.models.registry import adapter_for
from probe.testing import tiny_internvl
from train.internvit_next import (VARIANTS, configure_processor, expand_image_tokens, image_token_count,
                                  image_token_counts, swap_vision_tower, variant)
from train.internvit_next.tiny import tiny_internvl_model

torch.set_num_threads(1)
IMG = 5  # image token id of tiny_internvl_model


def _ids(n_img: int) -> torch.Tensor:
    return torch.tensor([[1, 2] + [IMG] * n_img + [3, 4]])


def test_a0_swap_keeps_internvl_logits():
    """Oracle: transformers' own InternVL (pixel shuffle + projector) on the same weights."""
    vlm = tiny_internvl_model()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.cat([_ids(4)] * 2)  # 4x4 patches -> 2x2 pixel-unshuffle tokens
    with torch.no_grad():
        ref = vlm(input_ids=ids, pixel_values=x).logits
        swap_vision_tower(vlm, variant("A0"))
        out = vlm(input_ids=ids, pixel_values=x).logits
    assert type(vlm.model.vision_tower).__name__ == "InternViTNext"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_runs_in_internvl_with_matching_token_count(name):
    cfg = variant(name, window=2)
    vlm = swap_vision_tower(tiny_internvl_model(), cfg)
    x = torch.randn(2, 3, 32, 32)
    n = image_token_count(cfg, 32, 32, 8)
    with torch.no_grad():
        feats = vlm.get_image_features(pixel_values=x)
        logits = vlm(input_ids=torch.cat([_ids(n)] * 2), pixel_values=x).logits
    assert feats.pooler_output.shape[:2] == (2, n) and [len(lay) for lay in feats.layouts] == [n, n]
    assert logits.shape == (2, n + 4, 64) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="do not match"):
        vlm(input_ids=torch.cat([_ids(n + 1)] * 2), pixel_values=x)


@pytest.mark.parametrize("name", ["A2", "A5"])
def test_native_resolution_images_in_internvl(name):
    """Two images of different sizes in one prompt: the per-image features equal those of one-by-one calls."""
    vlm = swap_vision_tower(tiny_internvl_model(), variant(name, window=2))
    imgs = [torch.randn(3, 32, 48), torch.randn(3, 48, 16)]
    counts = image_token_counts(vlm, imgs)
    ids = torch.tensor([expand_image_tokens([1, IMG, 2, IMG, 3], IMG, counts)])
    with torch.no_grad():
        both = vlm.get_image_features(pixel_values=imgs).pooler_output
        ones = [vlm.get_image_features(pixel_values=[im]).pooler_output[0] for im in imgs]
        logits = vlm(input_ids=ids, pixel_values=imgs).logits
    torch.testing.assert_close(both[0], torch.cat(ones), atol=1e-5, rtol=0)
    assert logits.shape[1] == ids.shape[1] == 3 + sum(counts)


def test_expand_image_tokens():
    assert expand_image_tokens([7, IMG, 8, IMG], IMG, [2, 3]) == [7, IMG, IMG, 8, IMG, IMG, IMG]
    with pytest.raises(ValueError, match="placeholders"):
        expand_image_tokens([7, IMG], IMG, [2, 3])
    with pytest.raises(ValueError, match="multiple of 2"):
        image_token_count(variant("A0"), 24, 32, 8)


def _examples(n: int = 3) -> list[Example]:
    rng = np.random.default_rng(0)
    return [Example(f"e{i}", Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)), "what is it?",
                    answer="ab") for i in range(n)]


def _swapped_adapter(name: str):
    model, processor = tiny_internvl(image_size=32, patch_size=8)
    cfg = variant(name, window=2)
    swap_vision_tower(model, cfg)
    configure_processor(processor, cfg, patch_size=8)
    return adapter_for(model, processor), cfg


@pytest.mark.parametrize("name", ["A0", "A2", "A5"])
def test_probe_adapter_builds_matching_inputs_and_trains(name):
    model, processor = tiny_internvl(image_size=32, patch_size=8)
    ref_ids = adapter_for(model, processor).build_inputs(_examples()).inputs["input_ids"]
    adapter, cfg = _swapped_adapter(name)
    batch = adapter.build_inputs(_examples())
    n_img = image_token_count(cfg, 32, 32, 8)
    assert int((batch.inputs["input_ids"][0] == adapter.image_token_id).sum()) == n_img
    if name != "A5":  # the token count is unchanged for A0..A2: the same prompt ids as the plain model
        assert torch.equal(batch.inputs["input_ids"], ref_ids)
    loss = adapter.model(**batch.inputs, labels=batch.labels).loss
    loss.backward()
    assert torch.isfinite(loss) and adapter.model.model.vision_tower.encoder.layer[0].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize("name", ["A0", "A2", "A5"])
def test_probe_capture_works(name, tmp_path):
    from probe.capture.run import capture

    adapter, _ = _swapped_adapter(name)
    store = capture(adapter, _examples(2), tmp_path / "s.zarr", CaptureSpec(vision=True, dtype="float32",
                                                                           batch_size=2), progress=False)
    ds = store.dataset if hasattr(store, "dataset") else store.open()
    assert ds.sizes["example"] == 2 and ds.sizes["vpatch"] == 17  # CLS + 4x4 patches
