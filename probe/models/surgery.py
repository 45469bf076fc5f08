"""Adapter methods that run part of a model or change its parts: the one place outside the family files that
touches module paths, forward hooks that stop a pass, or a model's bound methods (mixed into ModelAdapter).

`train` and `interventions` call these instead of walking module paths themselves.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.segments import Segment


class _StopForward(Exception):
    """Raised by a projector hook once what was asked for is in hand: the decoder is not run."""


@dataclass
class ProjectorRun:
    """What the projector saw and returned in one vision-only pass.

    projector_in: the projector's (args, kwargs); projector_out: its raw output (family layout, before the
    decoder places the rows; `ModelAdapter.visual_rows("projector.out", ...)` orders them).
    """

    projector_in: tuple[tuple, dict]
    projector_out: Any


class ComponentOps:
    """Mixin of `ModelAdapter`: partial forwards, component replacement and decoder-input edits."""

    # --- run as far as the projector --------------------------------------------------
    def run_to_projector(self, inputs, *, model: nn.Module | None = None, stop: bool = True) -> ProjectorRun:
        """Run `model` (default the adapter's; a PEFT wrapper of it works) on `inputs` until the projector has run.

        With `stop` the pass ends right after the projector (the decoder never runs); gradients flow as in
        the model's own forward, so callers choose `torch.no_grad()` themselves.
        """
        got: dict[str, Any] = {}
        projector = self.component("projector")

        def pre(_m, args, kwargs):
            got.setdefault("in", (args, kwargs))

        def post(_m, _args, output):
            got.setdefault("out", output)
            if stop:
                raise _StopForward

        handles = [projector.register_forward_pre_hook(pre, with_kwargs=True), projector.register_forward_hook(post)]
        try:
            (model if model is not None else self.model)(**inputs.inputs)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        if "out" not in got:
            raise RuntimeError(f"adapter {self.name!r}: the projector did not run (no image in the batch?)")
        return ProjectorRun(got["in"], got["out"])

    def visual_tokens(self, inputs, *, model: nn.Module | None = None) -> list[torch.Tensor]:
        """Per example, the projected visual tokens `[n_visual, d]` in the order the decoder sees them (no decoder pass)."""
        out = self.run_to_projector(inputs, model=model).projector_out
        return self.visual_rows("projector.out", self.site_tensor("projector.out", out), inputs)

    def projector_input(self, inputs, *, model: nn.Module | None = None) -> torch.Tensor:
        """The projector's main input tensor (family layout) for `inputs` (no decoder pass)."""
        return self.site_tensor("projector.in", self.run_to_projector(inputs, model=model).projector_in)

    # --- replace or wrap a component ----------------------------------------------------
    def replace_component(self, name: str, module: nn.Module | nn.Parameter) -> nn.Module | nn.Parameter:
        """Put `module` where component `name` is (the whole submodule object); returns the one it replaced."""
        path = self.component_path(name)
        parent_path, _, leaf = path.rpartition(".")
        parent = self.base_model.get_submodule(parent_path) if parent_path else self.base_model
        old = getattr(parent, leaf)
        setattr(parent, leaf, module)
        return old

    @contextmanager
    def replaced_component(self, name: str, module: nn.Module | nn.Parameter) -> Iterator[None]:
        """Component `name` is `module` inside the block, the original again after it (also on error)."""
        old = self.replace_component(name, module)
        try:
            yield
        finally:
            self.replace_component(name, old)

    def replace_image_features(self, features: Callable[..., Any]) -> None:
        """Route the model's image features (pixels -> projected tokens) through `features(inner, pixel_values, **kw)`.

        `inner` is the transformers model that holds the vision component and calls `get_image_features`; the
        function is bound to that one instance (other instances of the class are untouched). For a vision tower
        whose output needs steps of its own before the projector (a tokenizer, compression).
        """
        path = self.component_path("vision")
        parent_path = path.rpartition(".")[0]
        inner = self.base_model.get_submodule(parent_path) if parent_path else self.base_model
        if not hasattr(inner, "get_image_features"):
            raise TypeError(f"adapter {self.name!r}: {type(inner).__name__} computes no image features to replace")
        inner.get_image_features = types.MethodType(features, inner)

    # --- edit the visual tokens where the decoder receives them ---------------------------
    def edit_visual_tokens(self, edit: Callable[[torch.Tensor], torch.Tensor],
                           segments: Callable[[], torch.Tensor | None]) -> Callable[[], None]:
        """Install an edit of the decoder's input at VISUAL positions; returns the undo callable.

        `edit(rows)` gets every VISUAL position's input row `[n, d]` of the batch (example by example, each in
        sequence order, i.e. the decoder's order whatever the family's projector layout) and returns the
        replacement. `segments()` gives the batch's segment codes. The edit applies to passes that ran the
        projector (so a cached decoding step after the prompt is left alone).
        """
        fresh = {"vision": False}

        def saw_projector(_m, _args, _out):
            fresh["vision"] = True

        def pre(_m, args, kwargs):
            if not fresh["vision"]:
                return None
            fresh["vision"] = False
            segs = segments()
            hidden = args[0] if args else kwargs["hidden_states"]
            if segs is None or hidden.shape[:2] != segs.shape:
                raise ValueError(f"visual-token edit: the decoder input {tuple(hidden.shape[:2])} does not match the "
                                 f"batch's segments {None if segs is None else tuple(segs.shape)} (call set_batch)")
            visual = (segs == int(Segment.VISUAL)).to(hidden.device)
            new = hidden.clone()
            new[visual] = edit(hidden[visual]).to(hidden.dtype)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handles = [self.component("projector").register_forward_hook(saw_projector),
                   self.module("lm.layer.{i}.resid", 0).register_forward_pre_hook(pre, with_kwargs=True, prepend=True)]

        def undo() -> None:
            for h in handles:
                h.remove()

        return undo
