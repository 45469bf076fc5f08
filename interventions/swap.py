"""Component swaps between two checkpoints of one architecture, on the fly (nothing written to disk)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from interventions.base import Intervention, register_intervention
from probe.models.base import ModelAdapter
from probe.models.swap import ParameterSwap, expand_components

__all__ = ["ComponentSwap", "expand_components"]


@register_intervention
class ComponentSwap(Intervention):
    """While installed, the recipient's components compute with the donor's parameters.

    The mechanism (re-pointed parameters, checked pairs) is probe.models.swap.ParameterSwap; swapping every
    component ("all") reproduces the donor's logits exactly.
    """

    name = "swap"
    needs_donor = True

    def __init__(self, recipient: ModelAdapter, donor: ModelAdapter, components: Sequence[str] | str = ("projector",)) -> None:
        super().__init__()
        self.recipient, self.donor = recipient, donor
        self._swap = ParameterSwap(recipient, donor, components)
        self.components = self._swap.components

    @property
    def is_noop(self) -> bool:
        return self._swap.is_noop

    def _install(self) -> Callable[[], None]:
        return self._swap.install()
