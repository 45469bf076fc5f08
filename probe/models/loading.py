"""Load a real checkpoint from a local folder or a hub id: Auto classes, safetensors only."""

from __future__ import annotations

from pathlib import Path

import torch

from probe.models.base import ModelAdapter
from probe.models.registry import adapter_for


def load_model(
    path_or_hub_id: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    lora_adapter: str | Path | None = None,
) -> ModelAdapter:
    """Model + processor wrapped in its family's adapter; a PEFT LoRA adapter is merged in when given.

    Safetensors only (`use_safetensors=True`); `trust_remote_code` stays off unless asked.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    source = str(path_or_hub_id)
    if Path(source).exists() and not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(f"{source} holds no config.json: not a model folder")
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    from probe.models.registry import adapter_class

    adapter_class(config)  # unsupported family -> one-line error before loading weights
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        source,
        dtype=dtype or "auto",
        attn_implementation=attn_implementation,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    if lora_adapter is not None:
        from peft import PeftModel

        if not (Path(lora_adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{lora_adapter} holds no adapter_config.json: not a PEFT adapter folder")
        # merged, so the adapter's module paths are the base model's and before/after differ only by the weights
        model = PeftModel.from_pretrained(model, str(lora_adapter)).merge_and_unload()
    model = model.to(device).eval()
    return adapter_for(model, processor)
