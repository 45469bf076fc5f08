"""Trainer state (optimizer, scheduler, step) as JSON plus safetensors: resuming never unpickles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
TRAINABLE = "trainable.safetensors"


def _names(stem: str) -> tuple[str, str]:
    return f"{stem}.json", f"{stem}.safetensors"


def save_state(state: Any, folder: str | Path, *, stem: str = "trainer_state") -> None:
    """Write a nested structure of dicts, lists, tuples, numbers, strings, None and tensors to `folder`
    (`stem`.json + `stem`.safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    folder = Path(folder)
    json_name, tensor_name = _names(stem)
    save_file(tensors, folder / tensor_name)
    (folder / json_name).write_text(json.dumps(tree))


def load_state(folder: str | Path, *, stem: str = "trainer_state") -> Any:
    """Read what `save_state` wrote (data only: JSON and safetensors)."""
    folder = Path(folder)
    json_name, tensor_name = _names(stem)
    tensors = load_file(folder / tensor_name)
    path = folder / json_name
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
        return _decode(tree, tensors)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: damaged trainer state ({err.msg}); delete {folder} "
                         "to resume from an earlier checkpoint, or rerun with --no-resume") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: damaged trainer state ({type(err).__name__}: {err}); delete {folder} "
                         "to resume from an earlier checkpoint, or rerun with --no-resume") from None


def save_trainable(params: dict[str, torch.nn.Parameter], folder: str | Path) -> None:
    """Write the trainable tensors (by qualified name) of a checkpoint to `folder`."""
    save_file({n: p.detach().contiguous().cpu() for n, p in params.items()}, Path(folder) / TRAINABLE)


def restore_trainable(params: dict[str, torch.nn.Parameter], folder: str | Path) -> None:
    """Copy a checkpoint's trainable tensors into `params`; raise if its names are not exactly theirs."""
    folder = Path(folder)
    tensors = load_file(folder / TRAINABLE)
    missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or extra:
        raise ValueError(f"checkpoint {folder}: trainable parameters differ from this run's (another freeze/LoRA?): "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.device, p.dtype))


def has_state(folder: str | Path, *, stem: str = "trainer_state") -> bool:
    """Whether `folder` holds a complete state written under `stem`."""
    return all((Path(folder) / name).is_file() for name in _names(stem))


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # optimizer state is keyed by int parameter index: keep key types exactly
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"trainer state: cannot store a {type(obj).__name__} as data")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj
