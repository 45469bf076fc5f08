"""Count the host reads of tensor values that happen inside a forward pass (a CPU stand-in for GPU syncs).

On a GPU every read of a tensor's value on the host (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`, an op
whose output shape depends on the data: `nonzero`, `unique`, boolean-mask indexing, ...) drains the
device's queue. On a CPU nothing shows it, so this guard counts them: a `TorchFunctionMode` sees each such
call between the start of the first and the end of the last decoder layer of each forward, and attributes
it to the innermost calling frame outside torch. Reads from the project's own files (probe/, interventions/,
train/, tests/, benchmarks/) are `ours`; reads from the model's own code (transformers) are counted apart.

    with HostReads(adapter.decoder_layers) as reads:
        model(**batch.inputs)
    assert reads.ours == 0, reads.report()
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_ROOT = Path(__file__).resolve().parents[2]  # the repository (probe/ lives here)
_HERE = str(Path(__file__).resolve())
_TORCH = str(Path(torch.__file__).resolve().parent)

# value reads and ops whose output shape depends on the values (both must wait for the device on a GPU); below,
# also host data turned into tensors inside the forward (a pageable host->device copy that waits as well)
_TENSOR = torch.Tensor
_READS = {
    _TENSOR.item, _TENSOR.tolist, _TENSOR.__bool__, _TENSOR.__int__, _TENSOR.__float__, _TENSOR.__index__,
    _TENSOR.__format__, _TENSOR.__repr__, _TENSOR.numpy, _TENSOR.cpu, _TENSOR.nonzero, torch.nonzero,
    _TENSOR.argwhere, torch.argwhere, _TENSOR.unique, torch.unique, _TENSOR.unique_consecutive,
    torch.unique_consecutive, _TENSOR.masked_select, torch.masked_select, torch.equal, _TENSOR.equal,
    torch.allclose, _TENSOR.allclose, _TENSOR.bincount, torch.bincount,
    torch.nn.functional.one_hot,  # validates its values against num_classes on the host (a sync on CUDA)
}


def _is_read(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in _READS:
        return True
    if func in (_TENSOR.__getitem__, _TENSOR.__setitem__):
        index = args[1] if len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        # boolean-mask indexing (its shape is the mask's count), or a Python list as index (copied to the device)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool or isinstance(p, (list, range))
                   for p in parts)
    if func in (torch.tensor, torch.as_tensor):  # host data copied to the device (waits for it on a GPU)
        return not isinstance(args[0] if args else kwargs.get("data"), torch.Tensor)
    if func in (torch.where, _TENSOR.where) and len(args) + len(kwargs) == 1:  # where(cond) = nonzero
        return True
    if func in (torch.repeat_interleave, _TENSOR.repeat_interleave):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1
    if func is _TENSOR.to:  # a copy to the host from another device
        target = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
        src = args[0]
        return bool(target) and torch.device(target[0]).type == "cpu" and src.device.type != "cpu"
    return False


def _caller() -> tuple[str, bool]:
    """'file:line' of the innermost frame outside torch and this module, and whether it is the project's own."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TORCH) and name != _HERE:
            roots = {str(_ROOT)} | {str(Path(m.__file__).resolve().parents[1]) for m in (sys.modules.get("probe"),)
                                    if m is not None and getattr(m, "__file__", None)}
            ours = any(name.startswith(r) for r in roots) and "/.venv/" not in name and "site-packages" not in name
            try:
                shown = str(Path(name).resolve().relative_to(_ROOT))
            except ValueError:
                shown = name
            return f"{shown}:{frame.f_lineno}", ours
        frame = frame.f_back
    return "?", False


class _Mode(TorchFunctionMode):
    def __init__(self, owner: "HostReads") -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.owner.depth and _is_read(func, args, kwargs):
            where, ours = _caller()
            self.owner._add(f"{where} {getattr(func, '__name__', func)}", ours)
        return func(*args, **kwargs)


class HostReads:
    """Context manager: counts host reads of tensor values inside the decoder layers' span of every forward.

    decoder_layers: the model's decoder layers in order (the span runs from the first one's start to the
    last one's end). `ours` / `theirs`: reads from project files / from elsewhere (the model's own code);
    `where`: file:line and function -> count.
    """

    def __init__(self, decoder_layers: Sequence[nn.Module]) -> None:
        self.layers = list(decoder_layers)
        if not self.layers:
            raise ValueError("HostReads needs the decoder layers")
        self.ours = 0
        self.theirs = 0
        self.forwards = 0
        self.where: collections.Counter[str] = collections.Counter()
        self.theirs_where: collections.Counter[str] = collections.Counter()
        self.depth = 0
        self._handles: list[Any] = []
        self._mode = _Mode(self)

    def _add(self, where: str, ours: bool) -> None:
        if ours:
            self.ours += 1
            self.where[where] += 1
        else:
            self.theirs += 1
            self.theirs_where[where] += 1

    def _open(self, *_: Any, **__: Any) -> None:
        self.depth = 1
        self.forwards += 1

    def _close(self, *_: Any, **__: Any) -> None:
        self.depth = 0

    def __enter__(self) -> "HostReads":
        self._handles = [self.layers[0].register_forward_pre_hook(self._open),
                         self.layers[-1].register_forward_hook(self._close)]
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        self.depth = 0

    def report(self) -> str:
        """One line per reading site of ours, most frequent first."""
        return "; ".join(f"{w} x{n}" for w, n in self.where.most_common()) or "no host reads"
