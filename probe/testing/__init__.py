"""Tiny random-weight models for tests, benchmarks and the organism; probe's production modules never import it.

`families`: the real transformers classes of every supported family, with offline processors.
`hand_built`: smaller models fed by hand (token ids and segments built in the test), for hook-level tests.
"""

from probe.testing.families import (
    build_byte_tokenizer, tiny_gemma3, tiny_internvl, tiny_llava, tiny_llava_next, tiny_llava_onevision, tiny_qwen2_5_vl,
    tiny_qwen2_vl, tiny_qwen3_vl, tiny_smolvlm,
)
from probe.testing.hand_built import TinyVLM, build_tiny, forward_with_hooks, make_batch, segment_of

__all__ = [
    "TinyVLM", "build_byte_tokenizer", "build_tiny", "forward_with_hooks", "make_batch", "segment_of", "tiny_gemma3",
    "tiny_internvl", "tiny_llava", "tiny_llava_next", "tiny_llava_onevision", "tiny_qwen2_5_vl", "tiny_qwen2_vl",
    "tiny_qwen3_vl", "tiny_smolvlm",
]
