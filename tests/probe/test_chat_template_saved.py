"""The chat template survives save_processor, also where the processor has no video processor."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.testing import families as tiny
from probe.models.loading import load_model, save_processor
from probe.models.registry import adapter_for

BUILDERS = {"llava": tiny.tiny_llava, "qwen2_vl": tiny.tiny_qwen2_vl, "llava_onevision": tiny.tiny_llava_onevision}


def _template(image_markup: str) -> str:
    return ("{% for m in messages %}<|user|>{% for c in m.content %}{% if c.type == 'image' %}" + image_markup
            + "{% else %}{{ c.text }}{% endif %}{% endfor %}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("family", list(BUILDERS))
def test_reloaded_processor_tokenises_like_the_original(family, tmp_path):
    torch.manual_seed(0)
    model, processor = BUILDERS[family]()
    markup = "<|vision_start|><|image_pad|><|vision_end|>" if family == "qwen2_vl" else processor.image_token
    processor.chat_template = _template(markup)
    original = adapter_for(model, processor)
    model.save_pretrained(tmp_path)
    save_processor(processor, tmp_path)
    reloaded = load_model(tmp_path, dtype=torch.float32)
    assert reloaded.processor.chat_template == processor.chat_template
    example = [Example("e", Image.new("RGB", (40, 36), (10, 200, 30)), "What colour is the shape?")]
    ids, again = original.build_inputs(example).inputs["input_ids"], reloaded.build_inputs(example).inputs["input_ids"]
    assert ids.shape == again.shape  # the same prompt token count: the template was applied both times
    torch.testing.assert_close(again, ids, rtol=0, atol=0)
    text = processor.tokenizer.decode(ids[0])
    assert text.startswith("<|user|>") and text.rstrip().endswith("<|assistant|>")
