"""Adapters of every family on tiny random-weight models: segments, padding invariance, errors, tiles, M-RoPE order."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.models._inputs import answer_ids
from probe.models.base import BadExampleError
from probe.provenance import weights_hash
from probe.segments import Segment
from probe.testing.hand_built import forward_with_hooks

# the keys of the session fixture `tiny_models` (tests/conftest.py); tiled variants get several tiles per image
FAMILIES = ["llava", "internvl", "qwen2_vl", "qwen2_5_vl", "smolvlm", "idefics3", "internvl-tiled", "smolvlm-split",
            "idefics3-split", "llava_next", "llava_onevision", "gemma3", "qwen3_vl"]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# anyres: a base tile plus a tile grid whose rows each end in the learned image_newline, on an <image> token
ANYRES = {"llava_next", "llava_onevision"}
MARKERS = set(FAMILIES) - {"llava"} - ANYRES  # families with image start/end tokens


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _assert_image_tokens_labelled(family: str, ids: torch.Tensor, seg: torch.Tensor, image_token_id: int) -> None:
    """VISUAL exactly at the image tokens, but for anyres image_newline positions (image-token ids, IMAGE_SEP)."""
    image = ids == image_token_id
    if family in ANYRES:
        newline = seg == Segment.IMAGE_SEP
        assert (newline <= image).all() and (newline.sum(1) > 1).all()  # one per grid row
        image = image & ~newline
    assert torch.equal(seg == Segment.VISUAL, image)


def test_families_cover_tiny_models(tiny_models):
    assert sorted(FAMILIES) == sorted(tiny_models)


@pytest.fixture(scope="module")
def adapters(tiny_adapter):
    """family -> its adapter over the session's tiny model."""
    return tiny_adapter


def _examples(adapter) -> list[Example]:
    """Two examples: an English one with an answer, a longer Korean one without (different image sizes)."""
    placeholder = adapter.processor.image_token
    return [
        Example("en-1", _image(40, 48, 1), "What color is it?", answer="red"),
        Example("ko-1", _image(64, 30, 2), f"{placeholder}\n이 그림에 무엇이 보입니까? 자세히 설명하세요.", lang="ko"),
    ]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_segments_and_labels(adapters, family, padding_side):
    adapter = adapters(family)
    examples = _examples(adapter)
    batch = adapter.build_inputs(examples, padding_side)
    ids, mask, seg = batch.inputs["input_ids"], batch.inputs["attention_mask"], batch.segments
    assert seg.shape == ids.shape and batch.example_ids == ["en-1", "ko-1"]
    _assert_image_tokens_labelled(family, ids, seg, adapter.image_token_id)
    assert torch.equal(seg == Segment.PAD, mask == 0)
    assert (mask == 0).any(), "the two rows should need padding"
    pad_at = 0 if padding_side == "left" else -1
    assert mask[:, pad_at].min() == 0
    if family in MARKERS:
        assert ((seg == Segment.IMAGE_START).sum(1) == 1).all() and ((seg == Segment.IMAGE_END).sum(1) == 1).all()
        for row in seg:  # every visual token lies between the markers
            start = (row == Segment.IMAGE_START).nonzero().item()
            end = (row == Segment.IMAGE_END).nonzero().item()
            vis = (row == Segment.VISUAL).nonzero().flatten()
            assert start < vis.min() and vis.max() < end
    want = answer_ids(adapter.processor.tokenizer, "red", separator=" ")  # no template: "question? red"
    assert want[-1] == adapter.processor.tokenizer.eos_token_id
    labels = batch.labels
    answer = seg == Segment.ANSWER
    assert answer.sum(1).tolist() == [len(want), 0]
    assert ids[0][answer[0]].tolist() == want
    assert torch.equal(labels[answer], ids[answer])
    assert (labels[~answer] == -100).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_independent_of_padding(adapters, family):
    adapter = adapters(family)
    examples = _examples(adapter)
    with torch.no_grad():
        out = {}
        for side in ("left", "right"):
            batch = adapter.build_inputs(examples, side)
            logits = adapter.model(**batch.inputs).logits
            mask = batch.inputs["attention_mask"].bool()
            out[side] = [logits[b][mask[b]] for b in range(len(examples))]
        for b, ex in enumerate(examples):
            single = adapter.build_inputs([ex], "left")
            assert single.inputs["attention_mask"].all()
            alone = adapter.model(**single.inputs).logits[0]
            torch.testing.assert_close(out["left"][b], out["right"][b], atol=1e-5, rtol=0)
            torch.testing.assert_close(out["left"][b], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_examples_name_the_example(adapters, family, tmp_path):
    adapter = adapters(family)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    placeholder = adapter.processor.image_token
    cases = {
        "missing": Example("ex-missing", tmp_path / "nope.png", "hi"),
        "corrupt": Example("ex-corrupt", corrupt, "hi"),
        "two": Example("ex-two", _image(32, 32, 3), f"{placeholder} and {placeholder}"),
        "none": Example("ex-none", None, "hi"),
    }
    for kind, ex in cases.items():
        good = Example("ok", _image(32, 32, 4), "fine")
        with pytest.raises(BadExampleError, match=ex.id) as err:
            adapter.build_inputs([good, ex])
        assert err.value.example_id == ex.id and "\n" not in str(err.value), kind


@pytest.mark.parametrize("family", FAMILIES)
def test_model_reloads_with_auto_class(adapters, family, tmp_path):
    from transformers import AutoModelForImageTextToText

    adapter = adapters(family)
    adapter.model.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32, use_safetensors=True).eval()
    assert type(model) is type(adapter.model)
    assert weights_hash(model) == weights_hash(adapter.model)
    batch = adapter.build_inputs(_examples(adapter))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch.inputs).logits, adapter.model(**batch.inputs).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["internvl-tiled", "smolvlm-split", "idefics3-split", *sorted(ANYRES)])
def test_tiles_differ_between_examples(adapters, family):
    adapter = adapters(family)
    batch = adapter.build_inputs(_examples(adapter))
    visual = (batch.segments == Segment.VISUAL).sum(1)
    assert visual[0] != visual[1], "the two images should give different tile counts"
    if family.startswith(("smolvlm", "idefics3")):
        tags = (batch.segments == Segment.IMAGE_SEP).sum(1)
        assert (tags > 1).all()  # row/col tags, inner fake tokens and row newlines
        n_tags = [
            sum(1 for t in row.tolist() if adapter.processor.tokenizer.convert_ids_to_tokens(t).startswith("<row_"))
            for row in batch.inputs["input_ids"]
        ]
        # one tile tag per tile: visual tokens = (tiles + global image) * image_seq_len
        assert visual.tolist() == [(n + 1) * adapter.processor.image_seq_len for n in n_tags]
    if family in ANYRES:  # pixel_values [batch, tiles, C, H, W], zero-padded to the most tiles
        tiles = [adapter.build_inputs([ex]).inputs["pixel_values"].shape[1] for ex in _examples(adapter)]
        assert tiles[0] != tiles[1] and min(tiles) > 2 and batch.inputs["pixel_values"].shape[1] == max(tiles)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_token_count_follows_image_size(adapters, family):
    adapter = adapters(family)
    batch = adapter.build_inputs(_examples(adapter))
    merge = adapter.model.config.vision_config.spatial_merge_size
    want = (batch.inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    assert (batch.segments == Segment.VISUAL).sum(1).tolist() == want
    assert batch.inputs["pixel_values"].shape[0] == batch.inputs["image_grid_thw"].prod(-1).sum()
    assert "position_ids" not in batch.inputs  # M-RoPE: the model derives 3-D positions itself


def _chat_template(image: str) -> str:
    return (
        "{% for m in messages %}<|user|>{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image
        + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )


CHAT_IMAGE = {
    "llava": "<image>",
    "internvl": "<IMG_CONTEXT>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "smolvlm": "<image>",
    "idefics3": "<image>",
    "llava_next": "<image>",
    "llava_onevision": "<image>",
    "gemma3": "<start_of_image>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}


@pytest.mark.parametrize("family", list(CHAT_IMAGE))
def test_chat_template_path(adapters, family):
    import copy

    base = adapters(family)  # templates render through the tokenizer: no video processor (torchvision) needed
    processor = copy.copy(base.processor)
    processor.chat_template = _chat_template(CHAT_IMAGE[family])
    adapter = type(base)(base.model, processor)
    examples = _examples(adapter)
    batch = adapter.build_inputs(examples, "right")
    ids, seg = batch.inputs["input_ids"], batch.segments
    _assert_image_tokens_labelled(family, ids, seg, adapter.image_token_id)
    text = processor.tokenizer.decode(ids[1][seg[1] == Segment.TEXT])
    # the placeholder the Korean prompt carried is replaced by the template's single image
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>")
    assert "이 그림에 무엇이 보입니까?" in text and processor.image_token not in text
    if family in MARKERS:
        assert ((seg == Segment.IMAGE_START).sum(1) == 1).all() and ((seg == Segment.IMAGE_END).sum(1) == 1).all()
    with torch.no_grad():
        single = adapter.build_inputs(examples[1:], "right")
        torch.testing.assert_close(
            adapter.model(**batch.inputs).logits[1][batch.inputs["attention_mask"][1].bool()],
            adapter.model(**single.inputs).logits[0], atol=1e-4, rtol=0,
        )


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_vision_order_matches_image_tokens(adapters, family):
    adapter = adapters(family)
    batch = adapter.build_inputs(_examples(adapter))
    grid = batch.inputs["image_grid_thw"]
    seen = {}
    hooks = [
        adapter.module("projector.out").register_forward_hook(lambda m, i, o: seen.__setitem__("merged", o)),
        adapter.module("vision.out").register_forward_hook(lambda m, i, o: seen.__setitem__("patch", o)),
    ]
    try:
        with torch.no_grad():
            fed = torch.cat(adapter.model.model.get_image_features(batch.inputs["pixel_values"], grid).pooler_output)
    finally:
        for h in hooks:
            h.remove()
    merged = seen["merged"][adapter.vision_order(grid)]
    torch.testing.assert_close(merged, fed, atol=0, rtol=0)
    # patch rows, reordered, run through the merger give the same tokens: the orders agree
    with torch.no_grad():
        remerged = adapter.module("projector.out")(seen["patch"][adapter.vision_order(grid, "patch")])
    torch.testing.assert_close(remerged, fed, atol=1e-5, rtol=0)
    if family == "qwen2_5_vl":  # the windowed ViT really permutes: the raw merger rows are out of order
        assert not torch.allclose(seen["merged"], fed)


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_tokens_are_the_projector_outputs(adapters, family):
    adapter = adapters(family)
    batch = adapter.build_inputs(_examples(adapter), "right")
    n = adapter.n_visual_tokens(batch.segments)
    if family not in ANYRES:
        assert n.tolist() == (batch.inputs["input_ids"] == adapter.image_token_id).sum(1).tolist()
    seen, fed = [], {}

    def first_layer_input(module, args, kwargs):
        fed["h"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    hooks = [
        adapter.module("projector.out").register_forward_hook(lambda m, i, o: seen.append(o)),
        adapter.module("lm.layer.{i}.resid", 0).register_forward_pre_hook(first_layer_input, with_kwargs=True),
    ]
    forward_with_hooks(adapter.model, batch.inputs, hooks)
    out = torch.cat([o.reshape(-1, o.shape[-1]) for o in seen])
    if family in ANYRES:
        _check_anyres_features(adapter, batch, out, fed["h"])
        return
    # padding tiles (all-zero pixels) never reach the projector, so its rows are exactly the visual tokens
    assert out.shape[0] == int(n.sum())
    if hasattr(adapter, "vision_order"):
        out = out[adapter.vision_order(batch.inputs["image_grid_thw"])]
    start = 0
    for row in range(len(n)):
        pos = adapter.visual_positions(batch.segments, row)
        assert len(pos) == n[row] and (batch.inputs["input_ids"][row, pos] == adapter.image_token_id).all()
        # the decoder's input at the visual positions is the projector output, in order
        torch.testing.assert_close(fed["h"][row, pos], out[start:start + len(pos)], atol=0, rtol=0)
        start += len(pos)


def _check_anyres_features(adapter, batch, out: torch.Tensor, fed: torch.Tensor) -> None:
    """Anyres decoder input: base-tile projector rows, then grid rows (projector rows unless shrunk), newlines at IMAGE_SEP.

    out: projector output rows of every real tile (padding tiles never reach it); fed: the first layer's input.
    """
    vision = adapter.model.config.vision_config
    per_tile = (vision.image_size // vision.patch_size) ** 2
    newline = adapter.model.model.image_newline
    tiles = [adapter.build_inputs([ex]).inputs["pixel_values"].shape[1] for ex in _examples(adapter)]
    assert out.shape[0] == sum(tiles) * per_tile
    kept = []
    start = 0
    for row, n_tiles in enumerate(tiles):
        rows = out[start:start + n_tiles * per_tile]
        start += n_tiles * per_tile
        newlines = fed[row, batch.segments[row] == Segment.IMAGE_SEP]
        torch.testing.assert_close(newlines, newline.expand_as(newlines), atol=0, rtol=0)
        visual = fed[row, adapter.visual_positions(batch.segments, row)]
        torch.testing.assert_close(visual[:per_tile], rows[:per_tile], atol=0, rtol=0)  # the base tile comes first
        grid = visual[per_tile:]
        assert not (grid == newline).all(-1).any()
        # unless shrunk by vision_aspect_ratio, every grid token is one of this image's grid-tile projector rows
        kept.append(bool((grid[:, None] == rows[None, per_tile:]).all(-1).any(-1).all()))
    if adapter.model.config.model_type == "llava_onevision":  # the tiny model's anyres_max shrinks one test image only
        assert sorted(kept) == [False, True]
    else:
        assert all(kept)
