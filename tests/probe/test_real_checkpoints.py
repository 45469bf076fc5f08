"""Real checkpoints' processor files (tests/fixtures/real_processors) end to end, on shrunken random weights.

Oracles: the checkpoint's own chat template rendered for an image + text turn (and the prompt strings it renders,
written out by hand), the processor's own token expansion of that text, the image processors' own tile / grid
arithmetic, and eager attention.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from real_checkpoints import CHECKPOINTS, FIXTURES, IMAGE_SIZES, build_checkpoint, photo
from test_attention_stats import ATOL, RTOL, oracle_rows, oracle_shares

from probe.data.example import Example
from probe.models.loading import load_model, save_processor
from probe.segments import Segment

QUESTION = "What is in the image?"
# what each checkpoint's own template renders for [image, QUESTION] with the generation prompt (by hand, from the
# published template files), and the answer as its assistant turn puts it
RENDERED = {
    "llava-1.5-7b-hf": "USER: <image>\nWhat is in the image? ASSISTANT:",
    "SmolVLM-256M-Instruct": "<|im_start|>User:<image>What is in the image?<end_of_utterance>\nAssistant:",
    # the base model's template reads a bare content list (no roles) and has no assistant turn
    "Qwen2-VL-2B": "<|vision_start|><|image_pad|><|vision_end|>What is in the image?",
}
ANSWER_TOKENS = {  # the tokens of " a cat" after the prompt, then eos
    "llava-1.5-7b-hf": ["▁a", "▁cat", "</s>"],
    "SmolVLM-256M-Instruct": ["Ġa", "Ġcat", "<end_of_utterance>"],
    "Qwen2-VL-2B": ["Ġa", "Ġcat", "<|im_end|>"],
}


@pytest.fixture(scope="session")
def real_checkpoint(tmp_path_factory):
    """name -> folder of a shrunken random-weight checkpoint with the real processor files, built once per session."""
    root = tmp_path_factory.mktemp("real_checkpoints")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_checkpoint(name, root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def real_adapter(real_checkpoint):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(real_checkpoint(name), dtype=torch.float32)
        return cache[name]

    return get


def _prompt_ids(adapter, example: Example) -> list[int]:
    batch = adapter.build_inputs([replace(example, answer=None)], "right")
    return batch.inputs["input_ids"][0].tolist()


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_prompt_is_what_the_checkpoints_template_renders(real_adapter, name):
    """The prompt ids equal the processor's own expansion of the template's rendering of an image + text turn."""
    adapter = real_adapter(name)
    proc = adapter.processor
    image = photo(300, 451)
    own = proc.tokenizer.apply_chat_template(
        [{"type": "image"}, {"type": "text", "text": QUESTION}] if name == "Qwen2-VL-2B" else
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True, tokenize=False)
    assert own == RENDERED[name]
    images = [[image]] if name == "SmolVLM-256M-Instruct" else [image]
    want = proc(images=images, text=[own], return_tensors="pt")["input_ids"][0].tolist()
    assert _prompt_ids(adapter, Example("e", image, QUESTION)) == want
    # a placeholder in the manifest's prompt is not doubled
    assert _prompt_ids(adapter, Example("e", image, f"{proc.image_token}\n{QUESTION}")) == want


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_answer_continues_as_the_template_puts_it(real_adapter, name):
    """The labelled tokens are the answer with the assistant turn's separator, tokenised in context ("Ġa", not "a")."""
    adapter = real_adapter(name)
    tok = adapter.processor.tokenizer
    batch = adapter.build_inputs([Example("e", photo(64, 64), QUESTION, answer="a cat")], "right")
    labels = batch.labels[0]
    ids = batch.inputs["input_ids"][0]
    assert tok.convert_ids_to_tokens(labels[labels != -100].tolist()) == ANSWER_TOKENS[name]
    assert (batch.segments[0] == Segment.ANSWER).sum() == len(ANSWER_TOKENS[name])
    if name == "SmolVLM-256M-Instruct":  # the template's own assistant turn, tokenised whole
        turn = tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}], tokenize=False)
        assert turn.endswith("Assistant: a cat<end_of_utterance>\n")
        tail = tok(turn, add_special_tokens=False)["input_ids"][-4:-1]  # " a cat<end_of_utterance>", not "\n"
        assert ids[labels != -100].tolist() == tail


def _processor_tokens(name: str, proc, height: int, width: int) -> int:
    """Visual tokens the real processor's own arithmetic gives an image (independent of the adapter)."""
    if name == "llava-1.5-7b-hf":
        return (336 // 14) ** 2
    if name == "SmolVLM-256M-Instruct":
        ip = proc.image_processor
        # the image processor's resize (longest edge to a multiple of the tile) then split into tiles + the global one
        _, rows, cols = ip.get_number_of_image_patches(height, width)
        return (rows * cols + (1 if rows * cols else 0) or 1) * proc.image_seq_len
    cfg = json.loads((FIXTURES / name / "preprocessor_config.json").read_text())
    h, w = _smart_resize(height, width, 28, cfg["min_pixels"], cfg["max_pixels"])
    return (h // 14) * (w // 14) // 4


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's published resize rule: both sides a multiple of patch × merge, pixels within [min, max]."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_visual_token_counts_follow_the_processor(real_adapter, name):
    adapter = real_adapter(name)
    examples = [Example(k, photo(h, w, seed=i, grey=g), QUESTION) for i, (k, h, w, g) in enumerate(IMAGE_SIZES)]
    batch = adapter.build_inputs(examples, "left")
    got = (batch.segments == Segment.VISUAL).sum(1).tolist()
    want = [_processor_tokens(name, adapter.processor, h, w) for _, h, w, _ in IMAGE_SIZES]
    assert got == want
    assert (batch.inputs["input_ids"] == adapter.image_token_id).sum(1).tolist() == want
    if name == "llava-1.5-7b-hf":
        assert set(got) == {576}
    if name == "Qwen2-VL-2B":
        assert got[-1] == 4  # 20x20 is resized up to min_pixels: a 2x2 merged grid
        assert got[:-1] == (batch.inputs["image_grid_thw"].prod(-1) // 4).tolist()[:-1]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_attention_shares_equal_eager(real_adapter, name):
    """The recorder's per-segment shares and rows on the real processor's inputs == eager attention (1e-5)."""
    from probe.capture.attention import AttentionRecorder
    from probe.models.registry import adapter_for
    from probe.segments import last_prompt_index

    adapter = real_adapter(name)
    examples = [Example("a", photo(300, 451), QUESTION, answer="a cat"),
                Example("b", photo(60, 600, seed=3, grey=True), "이 사진에 무엇이 있습니까?", lang="ko")]
    batch = adapter.build_inputs(examples, "left")
    qpos = last_prompt_index(batch.segments)[:, None]
    layers = list(range(adapter.num_layers))
    model = copy.deepcopy(adapter.model)
    model.set_attn_implementation("sdpa")
    rec = AttentionRecorder(adapter_for(model, adapter.processor).attention_modules, layers)
    rec.set_batch(batch.segments, qpos)
    with rec, torch.no_grad():
        model(**batch.inputs)
    eager = copy.deepcopy(adapter.model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ref = eager(**batch.inputs, output_attentions=True)
    for layer in layers:
        attn = ref.attentions[layer]
        torch.testing.assert_close(rec.results[layer].share.double(), oracle_shares(attn, batch.segments),
                                   atol=ATOL, rtol=RTOL, equal_nan=True)
        torch.testing.assert_close(rec.results[layer].rows.double(), oracle_rows(attn, qpos), atol=ATOL, rtol=RTOL,
                                   equal_nan=True)


def _tokenizer_config_only(src: Path, dst: Path) -> Path:
    """A copy of checkpoint `src` whose chat template is only in tokenizer_config.json (as older checkpoints ship)."""
    shutil.copytree(src, dst)
    template = json.loads((src / "tokenizer_config.json").read_text()).get("chat_template")
    if template is None:
        template = (src / "chat_template.jinja").read_text() if (src / "chat_template.jinja").is_file() else \
            json.loads((src / "chat_template.json").read_text())["chat_template"]
        cfg = json.loads((dst / "tokenizer_config.json").read_text())
        cfg["chat_template"] = template
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in ("chat_template.json", "chat_template.jinja"):
        (dst / f).unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("name", ["llava-1.5-7b-hf", "SmolVLM-256M-Instruct"])
def test_a_saved_fine_tune_prompts_like_its_base(real_checkpoint, tmp_path, name):
    """A base whose template is only in tokenizer_config.json is prompted with it, as the checkpoint `train` writes
    from it (save_processor puts it in chat_template.jinja) is: identical prompt and answer ids."""
    base_dir = _tokenizer_config_only(real_checkpoint(name), tmp_path / "base")
    base = load_model(base_dir, dtype=torch.float32)
    assert not base.processor.chat_template  # the case: only the tokenizer holds the template
    saved = tmp_path / "final"
    shutil.copytree(base_dir, saved, ignore=shutil.ignore_patterns("*token*", "*template*", "*processor*"))
    save_processor(base.processor, saved)  # what train sft / mitigate write beside their checkpoints
    tuned = load_model(saved, dtype=torch.float32)
    assert tuned.processor.chat_template
    example = Example("e", photo(300, 451), QUESTION, answer="a cat")
    a, b = base.build_inputs([example], "right"), tuned.build_inputs([example], "right")
    assert a.inputs["input_ids"].tolist() == b.inputs["input_ids"].tolist()
    assert a.labels.tolist() == b.labels.tolist()
    text = base.processor.tokenizer.decode(a.inputs["input_ids"][0])
    tail = QUESTION + RENDERED[name].split(QUESTION)[1] + " a cat" + base.processor.tokenizer.eos_token
    assert text.endswith(tail)  # the template was applied, and the answer follows its assistant turn


def test_template_without_image_placeholder_is_one_line_naming_the_file(real_checkpoint, tmp_path):
    src = real_checkpoint("SmolVLM-256M-Instruct")
    dst = tmp_path / "ck"
    shutil.copytree(src, dst)
    (dst / "chat_template.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'text' %}"
                          "{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"}))
    adapter = load_model(dst, dtype=torch.float32)
    with pytest.raises(ValueError) as err:
        adapter.build_inputs([Example("e", photo(64, 64), QUESTION)])
    message = str(err.value)
    assert "\n" not in message and str(dst / "chat_template.json") in message and str(dst) in message
    assert "renders no image placeholder '<image>'" in message


def test_processor_refusal_keeps_its_cause(real_adapter, monkeypatch):
    """`--debug` shows why the processor refused an input: the one-line error is chained to the processor's."""
    from probe.models.base import BadExampleError

    adapter = copy.copy(real_adapter("Qwen2-VL-2B"))
    proc = copy.copy(adapter.processor)
    proc.chat_template = "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}" \
                         "{% else %}<|vision_start|><|image_pad|><|image_pad|><|vision_end|>{% endif %}{% endfor %}{% endfor %}"
    adapter.processor = proc
    with pytest.raises((BadExampleError, ValueError)) as err:
        adapter.build_inputs([Example("e", photo(64, 64), QUESTION)])
    assert "\n" not in str(err.value)
    if isinstance(err.value, BadExampleError):
        assert err.value.__cause__ is not None and not err.value.__suppress_context__


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_ranking_equals_full_forward(real_adapter, name, monkeypatch):
    """Shared-prompt KV-cache ranking (M-RoPE positions for Qwen2-VL) == one full forward per candidate, two-sided
    atol 1e-4 + rtol 1e-5 on summed log-probs of ~12 nats per token over a 152k vocabulary (float32)."""
    import probe.eval.predict as predict

    adapter = real_adapter(name)
    exs = [Example("a", photo(300, 451), QUESTION, lang="en"),
           Example("b", photo(60, 600, seed=2, grey=True), "이 사진의 주된 색은?", lang="ko"),
           Example("c", photo(20, 20, seed=5), "Colour?", lang="en")]
    choices = [["red", "green", "a blue car"], ["빨강", "초록"], ["yes", "no", "maybe", "red"]]
    flat = [replace(ex, answer=c) for ex, cs in zip(exs, choices) for c in cs]
    expected = _full_logits_logprobs(adapter, flat)
    np.testing.assert_allclose(predict.answer_logprobs(adapter, flat, batch_size=3), expected, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(predict, "answer_logprobs", lambda *a, **k: pytest.fail("fell back to full forwards"))
    got = np.concatenate(predict.candidate_logprobs(adapter, exs, choices, batch_size=4))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert math.isfinite(got.sum()) and got.std() > 0.1  # real scores, not a constant


def _full_logits_logprobs(adapter, examples: list[Example]) -> np.ndarray:
    """The reference: one example per forward, full-vocabulary logits at every position, log-softmax in float64."""
    out = []
    with torch.no_grad():
        for ex in examples:
            batch = adapter.build_inputs([ex], "right")
            logp = torch.log_softmax(adapter.model(**batch.inputs).logits[0, :-1].double(), -1)
            labels = batch.labels[0, 1:]
            keep = labels != -100
            out.append(float(logp[keep].gather(-1, labels[keep, None]).sum()))
    return np.array(out)


# Test data written from the structure of the public templates: Qwen2.5-VL-Instruct's chat_template.json (a default
# system turn, role messages, string or list content, "<|im_start|>assistant\n" generation prompt) and Gemma 3's
# (google/gemma-3-*-it: bos, "user"/"model" turns, a system turn folded into the first user turn, strict alternation).
QWEN25_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'][0]['text']"
    " + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('Conversation roles must "
    "alternate user/assistant/user/assistant/...') }}{%- endif -%}{%- if message['role'] == 'assistant' -%}"
    "{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- else -%}"
    "{{ raise_exception('Invalid content type') }}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}")


@pytest.mark.parametrize("family, template, prompt_tail", [
    ("qwen2_5_vl", QWEN25_TEMPLATE, "<|vision_end|>What is in the image?<|im_end|>\n<|im_start|>assistant\n"),
    ("gemma3", GEMMA3_TEMPLATE, "<end_of_image>\n\nWhat is in the image?<end_of_turn>\n<start_of_turn>model\n"),
])
def test_system_prompt_and_model_turn_templates(tiny_models, family, template, prompt_tail):
    """The answer follows the generation prompt directly (no separator), after the template's system turn/roles."""
    from probe.models.registry import adapter_for

    model, processor = tiny_models[family]
    processor = copy.copy(processor)
    processor.chat_template = template
    adapter = adapter_for(model, processor)
    batch = adapter.build_inputs([Example("e", photo(40, 48), QUESTION, answer="red")], "right")
    tok = processor.tokenizer
    ids, labels = batch.inputs["input_ids"][0], batch.labels[0]
    text = tok.decode(ids[labels == -100])
    assert text.endswith(prompt_tail)
    if family == "qwen2_5_vl":
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    want = tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labels[labels != -100].tolist() == want
