"""Gemma 3 through its own processor and adapter: bidirectional image blocks, sliding layers, padding, batch 2.

Oracles: eager attention with output_attentions=True (the model's own mask: causal text, bidirectional image
tokens, a sliding window), reduced in float64 by explicit loops, at 1e-5; the processor's own token_type_ids.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_attention_stats import ATOL, RTOL, oracle_rows, oracle_shares

from probe.capture.attention import AttentionRecorder
from probe.data.example import Example
from probe.models.registry import UnsupportedModelError, adapter_class
from probe.segments import Segment, last_prompt_index


@pytest.fixture(scope="module")
def adapter(tiny_adapter):
    return tiny_adapter("gemma3")


def _examples() -> list[Example]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (64, 30))]
    return [Example("a", images[0], "What color is it?", answer="red"),
            Example("b", images[1], "이 그림에 무엇이 보입니까? 자세히 설명하세요.", lang="ko")]


@pytest.fixture(scope="module")
def eager_model(adapter):
    model = copy.deepcopy(adapter.model)
    model.set_attn_implementation("eager")
    return model


def _queries(segments: torch.Tensor) -> torch.Tensor:
    """Per row: the first and last image token, a text token before the image, the last prompt token: [batch, 4]."""
    out = []
    for row in segments:
        visual = (row == Segment.VISUAL).nonzero().flatten()
        text = (row == Segment.TEXT).nonzero().flatten()
        out.append([int(visual[0]), int(visual[-1]), int(text[0]), -1])
    q = torch.tensor(out)
    q[:, 3] = last_prompt_index(segments)
    return q


@pytest.mark.parametrize("blockwise", [False, True])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_recorder_follows_the_bidirectional_image_mask(adapter, eager_model, padding, blockwise):
    """Rows of image queries reach later image keys; shares and rows == eager, including the sliding layer."""
    batch = adapter.build_inputs(_examples(), padding)
    seq = batch.segments.shape[1]
    window = adapter.text_config.sliding_window
    assert seq > window + 8, "the sliding window must bind on this batch"
    qpos = _queries(batch.segments)
    kw = dict(blockwise_above=8, block_size=5) if blockwise else {}
    rec = AttentionRecorder(adapter.attention_modules, list(range(adapter.num_layers)), **kw)
    rec.set_batch(batch.segments, qpos)
    with rec, torch.no_grad():
        adapter.model(**batch.inputs)
    with torch.no_grad():
        eager = eager_model(**batch.inputs, output_attentions=True)
    for layer, attn in enumerate(eager.attentions):
        got = rec.results[layer]
        torch.testing.assert_close(got.share.double(), oracle_shares(attn, batch.segments), atol=ATOL, rtol=RTOL, equal_nan=True)
        torch.testing.assert_close(got.rows.double(), oracle_rows(attn, qpos), atol=ATOL, rtol=RTOL, equal_nan=True)
        for b in range(2):
            first, last = int(qpos[b, 0]), int(qpos[b, 1])
            # the first image token sees the last one (bidirectional), a text token before the image does not
            assert float(got.rows[b, :, 0, last].min()) > 0 and float(attn[b, :, first, last].min()) > 0
            assert float(got.rows[b, :, 2, first:].abs().max()) == 0
    # the sliding layer (0) hides keys older than the window from the last prompt token; the global layer (1) does not
    b = 0
    q = int(qpos[b, 3])
    real = (batch.segments[b] != Segment.PAD).nonzero().flatten()
    old = real[real <= q - window]
    assert len(old) and float(rec.results[0].rows[b, :, 3, old].abs().max()) == 0
    assert float(rec.results[1].rows[b, :, 3, old].min()) > 0


def test_token_type_ids_mark_the_image_tokens(adapter):
    """token_type_ids: the processor's own for a single example, zero at padding in a batch."""
    examples = _examples()
    batch = adapter.build_inputs(examples, "left")
    types = batch.inputs["token_type_ids"]
    assert torch.equal(types.bool(), batch.segments == Segment.VISUAL)
    single = adapter.build_inputs(examples[1:], "left")
    text = f"{adapter.processor.image_token}\n{examples[1].prompt}"
    own = adapter.processor(images=[examples[1].image], text=[text], return_tensors="pt")
    n = own["input_ids"].shape[1]
    assert torch.equal(single.inputs["input_ids"][0, :n], own["input_ids"][0])
    assert torch.equal(single.inputs["token_type_ids"][0, :n], own["token_type_ids"][0])
    assert int(types.sum()) == 2 * adapter.model.config.mm_tokens_per_image


def test_markers_and_tied_head(adapter):
    batch = adapter.build_inputs(_examples(), "right")
    for row in batch.segments:
        start = int((row == Segment.IMAGE_START).nonzero())
        end = int((row == Segment.IMAGE_END).nonzero())
        visual = (row == Segment.VISUAL).nonzero().flatten()
        assert visual.tolist() == list(range(start + 1, end))
    # Gemma ties lm_head to the (scaled) embeddings: the tied weight belongs to `embed`
    assert adapter.component_parameters("lm_head") == {}
    assert list(adapter.component_parameters("embed")) == ["model.language_model.embed_tokens.weight"]


def test_unsupported_families_keep_their_message():
    assert adapter_class(SimpleNamespace(model_type="gemma3")).name == "gemma3"
    for missing in ("gemma3n", "paligemma", "mllama"):
        with pytest.raises(UnsupportedModelError, match=f"^unsupported model family '{missing}'; supported: .*gemma3"):
            adapter_class(SimpleNamespace(model_type=missing))
