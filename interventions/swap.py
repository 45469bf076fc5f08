"""Component swaps between two checkpoints of one architecture, on the fly (nothing written to disk)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from interventions.base import Intervention, register_intervention
from probe.models.base import ModelAdapter


def expand_components(adapter: ModelAdapter, names: Sequence[str] | str) -> list[str]:
    """Component names with ranges expanded: "all", "lm.layer.2:5" (layers 2, 3, 4), or plain names."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if name == "all":
            out += adapter.component_names()
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


@register_intervention
class ComponentSwap(Intervention):
    """While installed, the recipient's components compute with the donor's parameters.

    Parameter tensors are re-pointed (`param.data = donor.data`), never copied, so the swap is instant and
    exact, and the recipient's modules keep their identity (hooks, nnsight envoys and the attention recorder
    keep working). Buffers are not swapped: within one architecture and config they are derived, not learned
    (rotary frequencies). Swapping every component ("all") reproduces the donor's logits exactly.
    """

    name = "swap"
    needs_donor = True

    def __init__(self, recipient: ModelAdapter, donor: ModelAdapter, components: Sequence[str] | str = ("projector",)) -> None:
        super().__init__()
        self.recipient, self.donor = recipient, donor
        self.components = expand_components(recipient, components)
        self._pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        for name in self.components:
            mine, theirs = recipient.component_parameters(name), donor.component_parameters(name)
            if mine.keys() != theirs.keys():
                missing = sorted(set(mine) ^ set(theirs))[0]
                raise ValueError(f"swap {name!r}: the two models' parameters differ ({missing!r}); same architecture needed")
            for qual, p in mine.items():
                q = theirs[qual]
                if p.shape != q.shape or p.dtype != q.dtype or p.device != q.device:
                    raise ValueError(f"swap {name!r}: {qual} is {tuple(p.shape)} {p.dtype} {p.device} in the recipient but "
                                     f"{tuple(q.shape)} {q.dtype} {q.device} in the donor")
                self._pairs.append((p, q))

    @property
    def is_noop(self) -> bool:
        return all(p.data.data_ptr() == q.data.data_ptr() for p, q in self._pairs)

    def _install(self) -> Callable[[], None]:
        saved = [p.data for p, _ in self._pairs]
        for p, q in self._pairs:
            p.data = q.data

        def undo() -> None:
            for (p, _), data in zip(self._pairs, saved):
                p.data = data

        return undo
