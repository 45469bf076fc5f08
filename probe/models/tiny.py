"""Tiny random-weight models from the real transformers classes, with processors that work offline.

Used by the tests and by the model organism. The tokenizer is a byte-level BPE with no merges
(every UTF-8 byte is a token), so Hangul needs no vocabulary and any text round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def build_byte_tokenizer(special_tokens: Sequence[str] = ("<image>",)) -> PreTrainedTokenizerFast:
    """Byte-level BPE (byte alphabet, no merges) with bos/eos/pad and `special_tokens` added as special tokens.

    Ids 0..255 are the bytes; bos, eos, pad follow (256, 257, 258), then `special_tokens` in order.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
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
