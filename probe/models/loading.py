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
    allow_pickle: bool = False,
    device_map: str | dict | None = None,
) -> ModelAdapter:
    """Model + processor wrapped in its family's adapter; a PEFT LoRA adapter is merged in when given.

    Safetensors only (`use_safetensors=True`; a pickled LoRA `adapter_model.bin` only with
    `allow_pickle`); `trust_remote_code` stays off unless asked. Bad sources fail in one line
    before anything loads (see `check_model_source`). `device_map` (e.g. "auto") goes to `from_pretrained`
    for a model larger than one device; the model then stays where it places it (`device` is not applied).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    source = str(path_or_hub_id)
    local_only = check_model_source(source)
    if lora_adapter is not None:
        check_lora_adapter(lora_adapter, allow_pickle=allow_pickle)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_only)
    except OSError as err:  # transformers' multi-line "not a valid model identifier ..." and hub errors
        raise FileNotFoundError(f"model {source!r}: no such local folder or hub repository "
                                f"({str(err).splitlines()[0][:200]})") from err
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
        local_files_only=local_only,
        **({"device_map": device_map} if device_map is not None else {}),
    )
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_only)
    except (ImportError, ValueError) as err:  # transformers raises either when a video processor needs torchvision
        if "torchvision" not in str(err).lower():
            raise
        processor = _processor_without_video(source, config.model_type, trust_remote_code)
    if lora_adapter is not None:
        from peft import PeftModel

        # merged, so the adapter's module paths are the base model's and before/after differ only by the weights
        model = PeftModel.from_pretrained(model, str(lora_adapter)).merge_and_unload()
    model = (model if device_map is not None else model.to(device)).eval()
    return adapter_for(model, processor)


def check_model_source(source: str) -> bool:
    """Refuse, in one line, a model source that cannot load; True when only local files may be used.

    A missing path, a folder without config.json or without safetensors weights, and a hub id that is
    neither cached nor reachable (offline, or no network) fail here, fast, before transformers tries.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{source} holds no config.json: not a model folder")
        if not any(path.glob("*.safetensors")):
            pickled = sorted(p.name for p in path.glob("*.bin")) or ["no weights file"]
            raise FileNotFoundError(
                f"{source}: no safetensors weights ({pickled[0]}); convert with: python -c \"from transformers import "
                f"AutoModelForImageTextToText as M; M.from_pretrained('{source}', use_safetensors=False)"
                f".save_pretrained('{source}-safetensors')\" (only for a checkpoint you trust)")
        return False
    if path.exists():
        raise FileNotFoundError(f"{source} is a file, not a model folder")
    if _looks_like_path(source):
        raise FileNotFoundError(f"model folder not found: {source}")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise FileNotFoundError(f"model {source!r}: no such folder, and HF_HUB_OFFLINE is set and it is not in "
                                    "the hub cache; give a local model folder")
        return True
    if not _hub_reachable(constants.ENDPOINT):
        if not cached:
            raise FileNotFoundError(f"model {source!r}: no such folder, and the hub ({constants.ENDPOINT}) is "
                                    "unreachable to download it; give a local model folder or check the network")
        return True  # cached: load from the cache without waiting for network timeouts
    return False


def check_lora_adapter(folder: str | Path, *, allow_pickle: bool = False) -> None:
    """Refuse a folder that is not a PEFT adapter, and pickled weights unless `allow_pickle`."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no adapter_config.json: not a PEFT adapter folder")
    if not (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_model.bin").is_file() \
            and not allow_pickle:
        raise ValueError(f"{folder}: LoRA weights are pickled (adapter_model.bin; loading can run code); "
                         "save them as adapter_model.safetensors, or pass --allow-pickle if you trust the file")


def _looks_like_path(source: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else written like a path is a path."""
    return (source.startswith((".", "/", "~")) or "\\" in source or source.endswith("/")
            or source.count("/") > 1 or source.endswith((".json", ".safetensors", ".bin")))


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout` s (name lookup included)."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)  # name lookup ignores socket timeouts; do not wait for it beyond ours
    return bool(result and result[0])


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
    settings = {k: v for k, v in processor.to_dict().items()
                if k not in ("image_processor", "video_processor", "tokenizer", "chat_template")}
    (Path(path) / "processor_config.json").write_text(json.dumps(settings))
    template = getattr(processor, "chat_template", None)
    if isinstance(template, str):  # where transformers' save_pretrained puts it, so the prompt format survives
        (Path(path) / "chat_template.jinja").write_text(template, encoding="utf-8")
    elif template:  # several named templates
        (Path(path) / "chat_template.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")


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

    from probe.models._video import allow_missing_video_processor

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
    templates_file = cached_file(source, "chat_template.json", _raise_exceptions_for_missing_entries=False)
    if template_file and "chat_template" not in settings:
        settings["chat_template"] = Path(template_file).read_text(encoding="utf-8")
    elif templates_file and "chat_template" not in settings:
        settings["chat_template"] = json.loads(Path(templates_file).read_text(encoding="utf-8"))["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    with allow_missing_video_processor():
        if "video_processor" in cls.get_attributes():
            return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **settings)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **settings)
