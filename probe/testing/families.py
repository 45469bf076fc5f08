"""Tiny random-weight models from the real transformers classes, with processors that work offline.

Used by the tests, benchmarks and the model organism (never by probe's own production modules). The tokenizer is a byte-level BPE with no merges
(every UTF-8 byte is a token), so Hangul needs no vocabulary and any text round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from probe.models._video import allow_missing_video_processor as _allow_missing_video_processor

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def build_byte_tokenizer(
    special_tokens: Sequence[str] = ("<image>",), named_tokens: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (byte alphabet, no merges) with bos/eos/pad and `special_tokens` added as special tokens.

    Ids 0..255 are the bytes; bos, eos, pad follow (256, 257, 258), then `named_tokens` (special tokens the
    tokenizer exposes as attributes, e.g. {"start_image_token": "<img>"} -> `tok.start_image_token_id`),
    then `special_tokens` in order.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    named = {"extra_special_tokens": dict(named_tokens)} if named_tokens else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, **named)
    fast.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return fast


def tiny_llava(
    seed: int = 0,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_layers: int = 2,
    vision_dim: int = 64,
    text_layers: int = 4,
    text_dim: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vision_heads: int = 4,
    max_positions: int = 512,
):
    """A random-weight LlavaForConditionalGeneration (CLIP + Llama) and its LlavaProcessor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_byte_tokenizer(("<image>",))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_dim, intermediate_size=4 * vision_dim, num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=4 * text_dim, num_hidden_layers=text_layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        ),
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2,
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    return model, processor


def _video_processor(cls_name: str):
    """The family's default video processor, or None where torchvision is missing."""
    import importlib.util

    import transformers

    return getattr(transformers, cls_name)() if importlib.util.find_spec("torchvision") is not None else None


def _text_kwargs(tokenizer, *, layers: int, dim: int, heads: int, kv_heads: int, max_positions: int) -> dict:
    """Decoder config kwargs shared by the tiny builders below."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def tiny_internvl(
    seed: int = 0,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_dim: int = 32,
    text_layers: int = 2,
    text_dim: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    max_tiles: int = 1,
):
    """A random-weight InternVLForConditionalGeneration (InternViT + pixel-unshuffle MLP + Qwen2) and its InternVLProcessor.

    `max_tiles` > 1 turns on dynamic tiling (up to that many image_size tiles plus a thumbnail).
    """
    from transformers import (
        GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
        InternVLVisionConfig, Qwen2Config,
    )

    specials = {
        "start_image_token": "<img>", "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
    }
    tokenizer = build_byte_tokenizer((), named_tokens=specials)
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    grid = image_size // patch_size
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=vision_dim, intermediate_size=2 * vision_dim, num_hidden_layers=2, num_attention_heads=2,
            image_size=[image_size, image_size], patch_size=[patch_size, patch_size],
        ),
        text_config=Qwen2Config(**_text_kwargs(tokenizer, layers=text_layers, dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)),
        image_token_id=image_token_id,
        downsample_ratio=0.5,
        image_seq_length=(grid // 2) ** 2,
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=max_tiles > 1, min_patches=1, max_patches=max_tiles,
        do_convert_rgb=True,
    )
    with _allow_missing_video_processor():
        processor = InternVLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=_video_processor("InternVLVideoProcessor"),
            image_seq_length=(grid // 2) ** 2,
        )
    return model, processor


def _tiny_qwen_vl(version: str, seed: int, *, image_size: int, text_layers: int, text_dim: int, heads: int, kv_heads: int, max_positions: int):
    import transformers as tf

    specials = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tokenizer = build_byte_tokenizer(specials)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    patch, merge = 4, 2
    vision = dict(depth=2, hidden_size=32, num_heads=2, patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2, in_channels=3)
    if version == "2":
        cls, cfg_cls = tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLConfig
        vision.update(embed_dim=32, mlp_ratio=2, hidden_size=text_dim)
    else:
        cls, cfg_cls = tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLConfig
        vision.update(intermediate_size=64, out_hidden_size=text_dim, window_size=2 * patch * merge, fullatt_block_indexes=[1])
    text = _text_kwargs(tokenizer, layers=text_layers, dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)
    # head_dim 16 -> 8 rotary pairs split over (temporal, height, width)
    text.update(rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0))
    config = cfg_cls(
        vision_config=vision, text_config=text,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = cls(config).eval()
    unit = patch * merge
    image_processor = tf.Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
        min_pixels=unit * unit, max_pixels=image_size * image_size,
    )
    processor_cls = tf.Qwen2VLProcessor if version == "2" else tf.Qwen2_5_VLProcessor
    with _allow_missing_video_processor():
        processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=_video_processor("Qwen2VLVideoProcessor"))
    return model, processor


def tiny_qwen2_vl(seed: int = 0, *, image_size: int = 32, text_layers: int = 2, text_dim: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 512):
    """A random-weight Qwen2VLForConditionalGeneration (M-RoPE, dynamic resolution) and its Qwen2VLProcessor."""
    return _tiny_qwen_vl("2", seed, image_size=image_size, text_layers=text_layers, text_dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)


def tiny_qwen2_5_vl(seed: int = 0, *, image_size: int = 32, text_layers: int = 2, text_dim: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 512):
    """A random-weight Qwen2_5_VLForConditionalGeneration (windowed ViT, M-RoPE) and its Qwen2_5_VLProcessor."""
    return _tiny_qwen_vl("2.5", seed, image_size=image_size, text_layers=text_layers, text_dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)


def tiny_smolvlm(
    seed: int = 0,
    *,
    family: str = "smolvlm",
    image_size: int = 32,
    patch_size: int = 8,
    scale_factor: int = 2,
    text_layers: int = 2,
    text_dim: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    image_splitting: bool = False,
):
    """A random-weight SmolVLM (family="smolvlm") or Idefics3 (family="idefics3") model and its processor.

    Image splitting is off by default (one global image); with `image_splitting` an image is resized to
    at most 2*image_size and cut into image_size tiles plus the global image.
    """
    import transformers as tf

    if family not in ("smolvlm", "idefics3"):
        raise ValueError(f"family must be 'smolvlm' or 'idefics3', got {family!r}")
    tags = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *tags)
    tokenizer = build_byte_tokenizer(specials)
    image_seq_len = ((image_size // patch_size) ** 2) // (scale_factor**2)
    if family == "smolvlm":
        cls, cfg_cls, vcfg_cls = tf.SmolVLMForConditionalGeneration, tf.SmolVLMConfig, tf.SmolVLMVisionConfig
    else:
        cls, cfg_cls, vcfg_cls = tf.Idefics3ForConditionalGeneration, tf.Idefics3Config, tf.Idefics3VisionConfig
    config = cfg_cls(
        vision_config=vcfg_cls(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size,
        ),
        text_config=tf.LlamaConfig(**_text_kwargs(tokenizer, layers=text_layers, dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = cls(config).eval()
    ip_kwargs = dict(
        do_image_splitting=image_splitting, size={"longest_edge": (2 if image_splitting else 1) * image_size},
        max_image_size={"longest_edge": image_size}, do_convert_rgb=True,
    )
    if family == "smolvlm":
        image_processor = tf.SmolVLMImageProcessorPil(**ip_kwargs)
        with _allow_missing_video_processor():
            processor = tf.SmolVLMProcessor(image_processor, tokenizer, _video_processor("SmolVLMVideoProcessor"), image_seq_len=image_seq_len)
    else:
        image_processor = tf.Idefics3ImageProcessorPil(**ip_kwargs)
        processor = tf.Idefics3Processor(image_processor, tokenizer, image_seq_len=image_seq_len)
    return model, processor


def _anyres_pinpoints(image_size: int, grids: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Grid pinpoints [height, width] in pixels for tile grids given as (rows, cols) of image_size tiles."""
    return [[rows * image_size, cols * image_size] for rows, cols in grids]


def _tiny_anyres(
    family: str, seed: int, *, image_size: int, patch_size: int, text_layers: int, text_dim: int, heads: int, kv_heads: int,
    max_positions: int, vision_aspect_ratio: str = "anyres_max_9",
):
    """LLaVA-NeXT (family "llava_next") or LLaVA-OneVision ("llava_onevision") with image_size tiles; see the builders below."""
    import transformers as tf

    onevision = family == "llava_onevision"
    tokenizer = build_byte_tokenizer(("<image>", "<video>") if onevision else ("<image>",))
    text = _text_kwargs(tokenizer, layers=text_layers, dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    shared = dict(image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    if onevision:  # every grid up to 3x3 (the real model: up to 6x6); SigLIP has no CLS token
        pinpoints = _anyres_pinpoints(image_size, [(rows, cols) for rows in (1, 2, 3) for cols in (1, 2, 3)])
        config = tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(**vision), text_config=tf.Qwen3Config(**text, head_dim=text_dim // heads),
            video_token_id=tokenizer.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=vision_aspect_ratio, vision_feature_select_strategy="full", **shared,
        )
        cls = tf.LlavaOnevisionForConditionalGeneration
    else:  # LLaVA-1.6's grids; CLIP's CLS token is dropped ("default")
        pinpoints = _anyres_pinpoints(image_size, [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)])
        config = tf.LlavaNextConfig(
            vision_config=tf.CLIPVisionConfig(**vision), text_config=tf.LlamaConfig(**text), image_grid_pinpoints=pinpoints,
            vision_feature_select_strategy="default", **shared,
        )
        cls = tf.LlavaNextForConditionalGeneration
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = cls(config).eval()
    if onevision:
        image_processor = tf.LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints)
        with _allow_missing_video_processor():
            processor = tf.LlavaOnevisionProcessor(
                image_processor=image_processor, tokenizer=tokenizer, video_processor=_video_processor("LlavaOnevisionVideoProcessor"),
                num_image_tokens=(image_size // patch_size) ** 2, vision_feature_select_strategy="full",
                vision_aspect_ratio=vision_aspect_ratio,
            )
    else:
        image_processor = tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints,
        )
        processor = tf.LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
        )
    return model, processor


def tiny_llava_next(seed: int = 0, *, image_size: int = 16, patch_size: int = 4, text_layers: int = 2, text_dim: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 512):
    """A random-weight LlavaNextForConditionalGeneration (CLIP + Llama, anyres tiles) and its LlavaNextProcessor.

    An image becomes a base tile plus image_size tiles on LLaVA-1.6's grids (1x2, 2x1, 2x2, 3x1, 1x3); the decoder
    sees the base tile's patches, then the unpadded grid's patches row by row, each row closed by `image_newline`.
    """
    return _tiny_anyres("llava_next", seed, image_size=image_size, patch_size=patch_size, text_layers=text_layers, text_dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)


def tiny_llava_onevision(seed: int = 0, *, image_size: int = 16, patch_size: int = 4, text_layers: int = 2, text_dim: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 512, vision_aspect_ratio: str = "anyres_max_4"):
    """A random-weight LlavaOnevisionForConditionalGeneration (SigLIP + Qwen3, as VARCO-VISION-2.0) and its LlavaOnevisionProcessor.

    Tiles as LLaVA-NeXT, on every grid up to 3x3; `vision_aspect_ratio` "anyres_max_N" shrinks (bilinear) the
    grid features of an image spanning more than about N tiles, so with N=4 some images shrink and others not.
    """
    return _tiny_anyres("llava_onevision", seed, image_size=image_size, patch_size=patch_size, text_layers=text_layers, text_dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions, vision_aspect_ratio=vision_aspect_ratio)


def tiny_gemma3(
    seed: int = 0, *, image_size: int = 32, patch_size: int = 4, tokens_per_image: int = 16, text_layers: int = 2,
    text_dim: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 512, sliding_window: int = 24,
):
    """A random-weight Gemma3ForConditionalGeneration (SigLIP + avg-pool projector + Gemma 3) and its Gemma3Processor.

    The image is squashed to image_size x image_size, its (image_size/patch_size)² patches average-pooled to
    `tokens_per_image`; the decoder sees `<start_of_image>` + `<image_soft_token>`×N + `<end_of_image>`, image tokens
    attending to each other bidirectionally. Layer 0 slides (window `sliding_window`), layer 1 is global, as in
    Gemma 3's 5:1 pattern; lm_head is tied to the embeddings.
    """
    import transformers as tf

    specials = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = build_byte_tokenizer((), named_tokens=specials)
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in specials.items()}
    text = _text_kwargs(tokenizer, layers=text_layers, dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)
    text.update(head_dim=text_dim // heads, query_pre_attn_scalar=text_dim // heads, sliding_window=sliding_window,
                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(text_layers)],
                tie_word_embeddings=True)
    config = tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(**text),
        vision_config=tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                            image_size=image_size, patch_size=patch_size),
        mm_tokens_per_image=tokens_per_image, image_token_index=ids["image_token"], boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"], tie_word_embeddings=True,
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = tf.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initialises the projection to zeros: every image token would be 0
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        projection.normal_(0.0, projection.shape[0] ** -0.5)
    image_processor = tf.Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, do_convert_rgb=True)
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens_per_image)
    return model, processor


def tiny_qwen3_vl(
    seed: int = 0, *, image_size: int = 32, text_layers: int = 3, text_dim: int = 64, heads: int = 4, kv_heads: int = 2,
    max_positions: int = 512, deepstack: Sequence[int] = (0, 1),
):
    """A random-weight Qwen3VLForConditionalGeneration (ViT with DeepStack mergers, interleaved M-RoPE) and its Qwen3VLProcessor.

    The vision blocks in `deepstack` each feed a merger whose output is added to the visual positions of decoder
    layer j's output (j-th entry -> after layer j), as in Qwen3-VL.
    """
    import transformers as tf

    specials = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tokenizer = build_byte_tokenizer(specials)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    patch, merge = 4, 2
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=2, in_channels=3, out_hidden_size=text_dim, num_position_embeddings=64,
                  deepstack_visual_indexes=list(deepstack))
    text = _text_kwargs(tokenizer, layers=text_layers, dim=text_dim, heads=heads, kv_heads=kv_heads, max_positions=max_positions)
    # head_dim 16 -> 8 rotary pairs, interleaved over (temporal, height, width)
    text.update(head_dim=text_dim // heads,
                rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], mrope_interleaved=True, rope_theta=10000.0))
    config = tf.Qwen3VLConfig(
        vision_config=vision, text_config=text,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = tf.Qwen3VLForConditionalGeneration(config).eval()
    unit = patch * merge
    image_processor = tf.Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=merge, temporal_patch_size=2, min_pixels=unit * unit, max_pixels=image_size * image_size,
    )
    with _allow_missing_video_processor():
        processor = tf.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=_video_processor("Qwen3VLVideoProcessor"))
    return model, processor
