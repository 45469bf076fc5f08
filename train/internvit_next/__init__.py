"""InternViT-Next: modernised InternVL vision encoder (window attention, 2-D RoPE, native resolution)."""
from .config import VARIANTS, InternViTNextConfig, variant
from .convert import convert_vision_model, swap_vision_tower
from .model import InternViTNext, InternViTNextOutput, num_image_tokens

__all__ = ["VARIANTS", "InternViTNextConfig", "variant", "convert_vision_model", "swap_vision_tower",
           "InternViTNext", "InternViTNextOutput", "num_image_tokens"]
