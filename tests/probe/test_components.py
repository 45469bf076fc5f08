"""Adapter components on every family: they partition the parameters, and each --freeze choice freezes exactly its part.

Oracle: the parameter sets written out by hand from each family's module paths (not from the adapter).
"""

from __future__ import annotations

import pytest
import torch

from probe.models.registry import adapter_for
from train.sft.freeze import apply_freeze, lora_target_modules

# family -> (vision prefix, projector prefix, language-model prefix), read off the transformers classes
PATHS = {
    "llava": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."),
    "llava_next": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."),
    "llava_onevision": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."),
    "internvl": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."),
    "qwen2_vl": ("model.visual.", "model.visual.merger.", "model.language_model."),
    "qwen2_5_vl": ("model.visual.", "model.visual.merger.", "model.language_model."),
    "smolvlm": ("model.vision_model.", "model.connector.", "model.text_model."),
    "idefics3": ("model.vision_model.", "model.connector.", "model.text_model."),
    "gemma3": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model."),
    "qwen3_vl": ("model.visual.", "model.visual.merger.", "model.language_model."),
}
# projector-like parts inside the vision tower: Qwen3-VL's DeepStack mergers
EXTRA_PROJECTORS = {"qwen3_vl": ("model.visual.deepstack_merger_list.",)}
FAMILIES = list(PATHS)


def _frozen_by_hand(family: str, name: str, choice: str) -> bool:
    """Whether parameter `name` is frozen by `choice`, from the module paths alone."""
    vision, projector, lm = PATHS[family]
    projectors = (projector, *EXTRA_PROJECTORS.get(family, ()))
    if choice == "vision":
        return name.startswith(vision) and not name.startswith(projectors)
    if choice == "projector":
        return name.startswith(projectors) or name == "model.image_newline"
    if choice == "embeddings":
        return name.startswith(lm + "embed_tokens.")
    if choice == "decoder":
        return name.startswith((lm, "lm_head."))
    if choice.startswith("layer"):
        lo, _, hi = choice.removeprefix("layer").partition("-")
        return any(name.startswith(f"{lm}layers.{i}.") for i in range(int(lo), int(hi or lo) + 1))
    raise AssertionError(choice)


@pytest.fixture(scope="module")
def adapters(tiny_adapter):
    """family -> its adapter over the session's tiny model."""
    return tiny_adapter


@pytest.mark.parametrize("family", FAMILIES)
def test_components_partition_parameters(adapters, family):
    adapter = adapters(family)
    names = adapter.component_names()
    assert names[:2] == ["vision", "projector"] and "lm.layer.0" in names and f"lm.layer.{adapter.num_layers}" not in names
    params = dict(adapter.model.named_parameters())
    seen: dict[str, str] = {}
    for comp in names:
        for qual, p in adapter.component_parameters(comp).items():
            assert qual not in seen, f"{qual} in both {seen[qual]} and {comp}"
            assert p is params[qual]
            seen[qual] = comp
    assert set(seen) == set(params), f"in no component: {sorted(set(params) - set(seen))[:3]}"
    ids = {id(p) for p in params.values()}
    assert len(ids) == len(params)  # named_parameters lists a tied tensor once, so once here too
    # the components are the modules at their paths
    assert adapter.component("lm.layer.1") is adapter.decoder_layers[1]
    assert adapter.vision_tower is adapter.component("vision") and adapter.projector is adapter.component("projector")
    with pytest.raises(KeyError, match="no component 'lm.layer.99'"):
        adapter.component("lm.layer.99")


def test_tied_lm_head_belongs_to_embed(adapters):
    adapter = adapters("internvl")  # the tiny InternVL ties lm_head to the input embeddings
    assert adapter.model.lm_head.weight is adapter.input_embeddings.weight
    assert adapter.component_parameters("lm_head") == {}
    assert list(adapter.component_parameters("embed")) == ["model.language_model.embed_tokens.weight"]
    assert adapter.component("lm_head") is adapter.model.lm_head


def test_qwen_vision_is_the_whole_vit_but_the_merger(adapters):
    adapter = adapters("qwen2_vl")
    vision = adapter.component_parameters("vision")
    everything = {n: p for n, p in adapter.model.named_parameters() if n.startswith("model.visual.")}
    merger = {n for n in everything if n.startswith("model.visual.merger.")}
    assert set(vision) == set(everything) - merger and merger == set(adapter.component_parameters("projector"))
    assert any(".blocks.0." in n for n in vision) and any("patch_embed" in n for n in vision)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("freeze", [("vision",), ("projector",), ("embeddings",), ("decoder",), ("layer1",),
                                    ("layer0-1",), ("vision", "projector", "layer0")])
def test_freeze_leaves_exactly_the_rest_trainable(adapters, family, freeze):
    adapter = adapters(family)
    params = dict(adapter.model.named_parameters())
    try:
        n_trainable = apply_freeze(adapter, freeze)
        trainable = {n for n, p in params.items() if p.requires_grad}
    finally:
        for p in params.values():  # the session's models are shared
            p.requires_grad_(True)
    want = {n for n in params if not any(_frozen_by_hand(family, n, c) for c in freeze)}
    assert trainable == want, f"unexpected: {sorted(trainable ^ want)[:4]}"
    assert n_trainable == sum(params[n].numel() for n in want)
    assert want != set(params)  # every choice freezes something


def test_lora_targets_skip_frozen_layers(adapters):
    adapter = adapters("llava")
    targets = lora_target_modules(adapter, ("layer0",))
    assert targets and all(t.startswith("model.language_model.layers.1.") for t in targets)
    assert lora_target_modules(adapter, ("decoder",)) == []


def test_components_work_through_peft(tiny_models):
    from peft import LoraConfig, get_peft_model

    from probe.testing import tiny_llava

    model, processor = tiny_llava(text_layers=2, text_dim=32, vision_dim=32)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["model.language_model.layers.0.self_attn.q_proj"]))
    adapter = adapter_for(peft, processor)
    layer0 = adapter.component_parameters("lm.layer.0")
    assert any("lora_A" in n for n in layer0)
    owners = adapter.parameter_owners()
    assert None not in owners.values() and len(owners) == len(dict(model.named_parameters()))
    assert torch.is_tensor(next(iter(layer0.values())))
