"""Swapping components between two checkpoints of one architecture: parameters re-pointed, never copied.

`swapped(recipient, donor, components)` is a context manager: inside it the recipient's components compute
with the donor's parameters. interventions.swap.ComponentSwap is the Intervention wrapper over `ParameterSwap`;
probe.diagnose and train.planted use it directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from probe.models.base import ModelAdapter

QK = "lm.qk"  # the query and key projections of every decoder layer (the attention pattern's parameters)
_QK_NAMES = ("q_proj", "k_proj")  # LLaMA / Qwen / Mistral / Gemma naming; fused-qkv families have no "lm.qk"


def expand_components(adapter: ModelAdapter, names: Sequence[str] | str) -> list[str]:
    """Component names with ranges expanded: "all", "lm.layer.2:5" (layers 2, 3, 4), "lm.qk", or plain names."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if name == "all":
            out += adapter.component_names()
        elif name == QK:
            query_key_parameters(adapter)  # one-line error for a family without separate q/k projections
            out.append(name)
        elif name.startswith("lm.layer.") and ":" in name:
            lo, hi = name.removeprefix("lm.layer.").split(":")
            start, stop = int(lo or 0), int(hi or adapter.num_layers)
            if not 0 <= start < stop <= adapter.num_layers:
                raise ValueError(f"layer range {name!r} is outside the decoder's {adapter.num_layers} layers")
            out += [f"lm.layer.{i}" for i in range(start, stop)]
        else:
            adapter.component_path(name)  # one-line KeyError for an unknown name
            out.append(name)
    return list(dict.fromkeys(out))


def query_key_parameters(adapter: ModelAdapter) -> dict[str, torch.nn.Parameter]:
    """Qualified name -> parameter of every decoder layer's query and key projections (weights and biases)."""
    out: dict[str, torch.nn.Parameter] = {}
    for i in range(adapter.num_layers):
        layer = adapter.component(f"lm.layer.{i}")
        prefix = adapter.component_path(f"lm.layer.{i}")
        for qual, p in layer.named_parameters():
            if any(part in _QK_NAMES for part in qual.split(".")):
                out[f"{prefix}.{qual}"] = p
    if not out:
        raise ValueError(f"adapter {adapter.name!r}: no separate query/key projections ({'/'.join(_QK_NAMES)}) to "
                         f"swap as {QK!r}")
    return out


def group_parameters(adapter: ModelAdapter, name: str) -> dict[str, torch.nn.Parameter]:
    """Qualified name -> parameter of one expanded component name (a component, or "lm.qk")."""
    return query_key_parameters(adapter) if name == QK else adapter.component_parameters(name)


def parameters_of(adapter: ModelAdapter, components: Sequence[str] | str) -> dict[str, torch.nn.Parameter]:
    """Qualified name -> parameter of every component named (ranges, "all" and "lm.qk" allowed)."""
    return {q: p for name in expand_components(adapter, components) for q, p in group_parameters(adapter, name).items()}


class ParameterSwap:
    """The (recipient parameter, donor tensor) pairs of a swap, checked; `install()` re-points, its return undoes.

    Parameter tensors are re-pointed (`param.data = donor.data`), never copied, so the swap is instant and exact
    and the recipient's modules keep their identity (hooks and recorders keep working). Buffers are not swapped:
    within one architecture and config they are derived, not learned (rotary frequencies).
    """

    def __init__(self, recipient: ModelAdapter, donor: ModelAdapter, components: Sequence[str] | str) -> None:
        self.components = expand_components(recipient, components)
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        for name in self.components:
            mine, theirs = group_parameters(recipient, name), group_parameters(donor, name)
            if mine.keys() != theirs.keys():
                missing = sorted(set(mine) ^ set(theirs))[0]
                raise ValueError(f"swap {name!r}: the two models' parameters differ ({missing!r}); same architecture needed")
            for qual, p in mine.items():
                q = theirs[qual]
                if p.shape != q.shape or p.dtype != q.dtype or p.device != q.device:
                    raise ValueError(f"swap {name!r}: {qual} is {tuple(p.shape)} {p.dtype} {p.device} in the recipient but "
                                     f"{tuple(q.shape)} {q.dtype} {q.device} in the donor")
                self.pairs.append((p, q))

    @property
    def is_noop(self) -> bool:
        """Whether every swapped parameter already shares the donor's storage."""
        return all(p.data.data_ptr() == q.data.data_ptr() for p, q in self.pairs)

    def install(self):
        """Re-point the recipient's parameters to the donor's; returns a function that undoes it."""
        saved = [p.data for p, _ in self.pairs]
        for p, q in self.pairs:
            p.data = q.data

        def undo() -> None:
            for (p, _), data in zip(self.pairs, saved):
                p.data = data

        return undo


@contextmanager
def swapped(recipient: ModelAdapter, donor: ModelAdapter, components: Sequence[str] | str) -> Iterator[list[str]]:
    """Inside the block the recipient's `components` compute with the donor's parameters; yields the names."""
    swap = ParameterSwap(recipient, donor, components)
    undo = swap.install()
    try:
        yield swap.components
    finally:
        undo()
