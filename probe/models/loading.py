"""Load a real checkpoint from a local folder or a hub id: Auto classes, safetensors only."""

from __future__ import annotations

from pathlib import Path

import torch

from probe.models.base import ModelAdapter
from probe.models.registry import adapter_for
from probe.provenance import weights_hash

__all__ = ["load_model", "save_processor", "weights_hash"]


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
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (ImportError, ValueError) as err:  # transformers raises either when a video processor needs torchvision
        if "torchvision" not in str(err).lower():
            raise
        processor = _processor_without_video(source, config.model_type, trust_remote_code)
    if lora_adapter is not None:
        from peft import PeftModel

        if not (Path(lora_adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{lora_adapter} holds no adapter_config.json: not a PEFT adapter folder")
        # merged, so the adapter's module paths are the base model's and before/after differ only by the weights
        model = PeftModel.from_pretrained(model, str(lora_adapter)).merge_and_unload()
    model = model.to(device).eval()
    return adapter_for(model, processor)


def save_processor(processor, path: str | Path) -> None:
    """Save a processor so `load_model` reads it back, also where its video processor is missing (no torchvision).

    transformers' `save_pretrained` needs every sub-processor; images-only use has none for video, so
    then the tokenizer, the image processor and processor_config.json are written as a checkpoint holds them.
    """
    import json

    if getattr(processor, "video_processor", "absent") is not None:
        processor.save_pretrained(str(path))
        return
    processor.tokenizer.save_pretrained(str(path))
    processor.image_processor.save_pretrained(str(path))
    settings = {k: v for k, v in processor.to_dict().items() if k not in ("image_processor", "video_processor", "tokenizer")}
    (Path(path) / "processor_config.json").write_text(json.dumps(settings))


def _processor_without_video(source: str, model_type: str, trust_remote_code: bool):
    """The family's processor with no video processor: transformers' video processors need torchvision.

    Images-only use never touches the video slot; tokenizer, image processor, the processor's own
    settings (processor_config.json) and the chat template are read from `source` as AutoProcessor would.
    """
    import json

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import cached_file

    from probe.models.tiny import _allow_missing_video_processor

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name is None:
        raise ImportError(f"{source}: AutoProcessor needs torchvision and {model_type!r} has no known processor class")
    cls = getattr(transformers, name)
    settings: dict = {}
    config_file = cached_file(source, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    if config_file:
        settings = json.loads(Path(config_file).read_text())
    settings = {k: v for k, v in settings.items() if k not in ("processor_class", "auto_map", "video_processor")}
    template_file = cached_file(source, "chat_template.jinja", _raise_exceptions_for_missing_entries=False)
    if template_file and "chat_template" not in settings:
        settings["chat_template"] = Path(template_file).read_text()
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    with _allow_missing_video_processor():
        if "video_processor" in cls.get_attributes():
            return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **settings)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **settings)
