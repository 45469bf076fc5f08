"""One shape for every intervention: a context manager over an adapter (or a donor/recipient pair).

    with Boost(adapter, alpha=0.2) as boost, compose(swap, ablation):
        boost.set_batch(batch)           # edits that depend on token roles read them from the batch
        logits = adapter.model(**batch.inputs).logits

Interventions compose with each other (`compose`) and with `probe.capture.Capture`: they edit the
model's own forward pass through module hooks, the attention registry or parameter pointers, so the
pass that is edited is the pass that is measured. A no-op setting installs nothing and is therefore
bit-identical to no intervention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import Any, ClassVar

from probe.models.base import ModelInputs

_REGISTRY: dict[str, type["Intervention"]] = {}


class Intervention:
    """Base class: subclasses implement `_install` (returning an undo callable) and may override `set_batch`."""

    name: ClassVar[str] = ""
    #: "model" edits need one adapter; "pair" edits a recipient with a donor's parts
    needs_donor: ClassVar[bool] = False

    def __init__(self) -> None:
        self._undo: Callable[[], None] | None = None
        #: while True an installed intervention passes through (used for a contrast pass that must run plain)
        self.paused = False

    @property
    def is_noop(self) -> bool:
        """Whether this setting changes nothing (then nothing is installed)."""
        return False

    @property
    def forward_passes(self) -> int:
        """Model forwards per call while installed (2 for edits that run a plain or contrast pass first)."""
        return 1

    def set_batch(self, batch: ModelInputs) -> None:
        """Tell the intervention the token roles of the next forward pass (default: not needed)."""

    def _install(self) -> Callable[[], None]:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return self._undo is not None

    def __enter__(self) -> "Intervention":
        if self._undo is not None:
            raise RuntimeError(f"{type(self).__name__} is already installed")
        self._undo = (lambda: None) if self.is_noop else self._install()
        return self

    def __exit__(self, *exc: object) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


class Composed(Intervention):
    """Several interventions installed in order (removed in reverse); `set_batch` reaches each."""

    name = "composed"

    def __init__(self, parts: Iterable[Intervention]) -> None:
        super().__init__()
        self.parts = list(parts)

    @property
    def is_noop(self) -> bool:
        return all(p.is_noop for p in self.parts)

    def set_batch(self, batch: ModelInputs) -> None:
        for p in self.parts:
            p.set_batch(batch)

    def _install(self) -> Callable[[], None]:
        stack = ExitStack()
        try:
            for p in self.parts:
                stack.enter_context(p)
        except BaseException:
            stack.close()
            raise
        return stack.close


def compose(*parts: Intervention) -> Composed:
    """One context manager installing `parts` in order."""
    return Composed(parts)


def register_intervention(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: make an intervention reachable by its `name` (the runner's grids use names)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"an intervention named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def intervention_class(name: str) -> type[Intervention]:
    """The registered intervention called `name`."""
    if name not in _REGISTRY:
        raise KeyError(f"no intervention named {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available_interventions() -> list[str]:
    return sorted(_REGISTRY)


def make_intervention(name: str, adapter: Any, donor: Any = None, **params: Any) -> Intervention:
    """Build a registered intervention from its name and parameters (as a grid row gives them)."""
    cls = intervention_class(name)
    if cls.needs_donor:
        if donor is None:
            raise ValueError(f"intervention {name!r} needs a donor model (give two checkpoints)")
        return cls(adapter, donor, **params)
    return cls(adapter, **params)
