"""Tiny builders, the byte tokenizer, load_model round trips, weights_hash, unsupported families and LoRA."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.testing import families as tiny
from probe.models.loading import load_model, save_processor, weights_hash
from probe.models.registry import UnsupportedModelError, adapter_for, available_adapters

FAMILIES = ["llava", "internvl", "qwen2_vl", "qwen2_5_vl", "smolvlm", "idefics3", "internvl-tiled", "smolvlm-split",
            "idefics3-split", "llava_next", "llava_onevision", "gemma3", "qwen3_vl"]
TEXTS = ["What colour is the shape? Answer in one word.", "이 도형은 무슨 색입니까? 한 단어로 답하세요.", "  mixed 한글 &\n\ttabs  "]


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _examples(adapter) -> list[Example]:
    placeholder = adapter.processor.image_token
    return [
        Example("en-1", _image(40, 48, 1), "What color is it?", answer="red"),
        Example("ko-1", _image(64, 30, 2), f"{placeholder}\n이 그림에 무엇이 보입니까? 자세히 설명하세요.", lang="ko"),
    ]


# ------------------------------------------------------------------------------------------ byte tokenizer
@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips(text):
    tok = tiny.build_byte_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # no merges: one token per UTF-8 byte
    assert max(ids) < 256
    assert tok.decode(ids) == text


def test_byte_tokenizer_special_tokens():
    tok = tiny.build_byte_tokenizer(("<image>", "<x>"), named_tokens={"start_image_token": "<img>"})
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    assert tok.convert_tokens_to_ids(["<img>", "<image>", "<x>"]) == [259, 260, 261]
    assert tok.start_image_token_id == 259
    ids = tok("a<image>b 한", add_special_tokens=False)["input_ids"]
    assert ids[:3] == [tok.convert_tokens_to_ids("a"), 260, tok.convert_tokens_to_ids("b")]
    assert tok.decode(ids) == "a<image>b 한"


# ------------------------------------------------------------------------------------------ tiny builders
def test_tiny_llava_deterministic_for_seed():
    a, _ = tiny.tiny_llava(seed=3, text_layers=1, text_dim=32, vision_dim=32)
    b, _ = tiny.tiny_llava(seed=3, text_layers=1, text_dim=32, vision_dim=32)
    c, _ = tiny.tiny_llava(seed=4, text_layers=1, text_dim=32, vision_dim=32)
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)


def test_tiny_llava_sizes_follow_arguments():
    model, processor = tiny.tiny_llava(image_size=48, patch_size=8, text_layers=3, text_dim=96, heads=6, kv_heads=3)
    text = model.config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (3, 96, 6, 3)
    adapter = adapter_for(model, processor)
    batch = adapter.build_inputs([Example("e", _image(50, 70, 0), "hi")])
    assert int((batch.inputs["input_ids"] == adapter.image_token_id).sum()) == (48 // 8) ** 2
    assert tuple(batch.inputs["pixel_values"].shape[-2:]) == (48, 48)


def test_weights_hash_sees_one_changed_value():
    model, _ = tiny.tiny_llava(seed=0, text_layers=1, text_dim=32, vision_dim=32)
    before = weights_hash(model)
    assert weights_hash(model) == before
    with torch.no_grad():
        p = next(model.parameters())
        p.view(-1)[0] += 1e-3
    assert weights_hash(model) != before


# ------------------------------------------------------------------------------------------ load_model
@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_roundtrip(tiny_models, family, tmp_path):
    adapter = adapter_for(*tiny_models[family])
    adapter.model.save_pretrained(tmp_path)
    # without torchvision a video slot is empty: save_processor writes the parts and load_model then takes
    # its no-torchvision path (AutoProcessor raises ImportError)
    save_processor(adapter.processor, tmp_path)
    loaded = load_model(tmp_path, dtype=torch.float32)
    assert type(loaded) is type(adapter)
    assert weights_hash(loaded.model) == weights_hash(adapter.model)
    batch = adapter.build_inputs(_examples(adapter))
    reloaded = loaded.build_inputs(_examples(loaded))
    for key, value in batch.inputs.items():
        torch.testing.assert_close(reloaded.inputs[key], value, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**reloaded.inputs).logits, adapter.model(**batch.inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_reloads_with_auto_class(tiny_models, family, tmp_path):
    from transformers import AutoModelForImageTextToText

    adapter = adapter_for(*tiny_models[family])
    adapter.model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32, use_safetensors=True).eval()
    assert type(model) is type(adapter.model)
    assert weights_hash(model) == weights_hash(adapter.model)
    batch = adapter.build_inputs(_examples(adapter))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch.inputs).logits, adapter.model(**batch.inputs).logits, atol=0, rtol=0)


def test_unsupported_model_type(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'llama'") as err:
        load_model(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for types in available_adapters().values():  # names the supported families
        assert all(t in message for t in types)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_lora_adapter_is_merged(tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir, lora_dir = tmp_path / "base", tmp_path / "lora"
    model, processor = tiny.tiny_llava(text_layers=2, text_dim=64)
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    base = adapter_for(model, processor)
    batch = base.build_inputs(_examples(base))
    with torch.no_grad():
        base_logits = model(**batch.inputs).logits
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, cfg).eval()
    assert any(p.abs().max() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        peft_logits = peft_model(**batch.inputs).logits
    peft_model.save_pretrained(lora_dir)
    loaded = load_model(base_dir, lora_adapter=lora_dir, dtype=torch.float32)
    # merged: the adapter's sites are the base model's module paths
    assert loaded.module("lm.layer.{i}.attn", 0) is loaded.model.model.language_model.layers[0].self_attn
    with torch.no_grad():
        lora_logits = loaded.model(**batch.inputs).logits
    assert (lora_logits - base_logits).abs().max() > 1e-3
    torch.testing.assert_close(lora_logits, peft_logits, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model(base_dir, lora_adapter=tmp_path / "nowhere")
