"""Supervised fine-tuning (full or LoRA, with per-component freezing) for any model probe has an adapter for."""

from train.sft.config import SFTConfig, parse_freeze
from train.sft.loop import SFTResult, StopTraining, sft

__all__ = ["SFTConfig", "SFTResult", "StopTraining", "parse_freeze", "sft"]
