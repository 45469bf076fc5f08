"""InternViT-Next: a modernised InternVL vision encoder (2-D RoPE, native resolution, window attention,
spatial tokens, adaptive token compression) that drops into transformers' InternVLForConditionalGeneration."""

from .config import VARIANTS, InternViTNextConfig, variant
from .convert import convert_vision_model
from .encoder import InternViTNext, InternViTNextOutput
from .layout import TokenLayout
from .vlm import configure_processor, expand_image_tokens, image_token_count, image_token_counts, swap_vision_tower

__all__ = [
    "VARIANTS", "InternViTNextConfig", "variant", "convert_vision_model", "InternViTNext", "InternViTNextOutput",
    "TokenLayout", "swap_vision_tower", "configure_processor", "expand_image_tokens", "image_token_count",
    "image_token_counts",
]
