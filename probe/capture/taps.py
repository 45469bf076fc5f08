"""Module taps through nnsight: residual stream, projector and vision tower, reduced in the forward.

Taps are requested from an nnsight envoy inside a trace, so a user's own `model.trace(...)`
edits and our capture run in one forward pass: put the edits in one invoke and `tap(...)` in an
empty invoke (`with tracer.invoke(): ...`), which nnsight applies to the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from torch import nn

from probe.capture.reduce import gather_positions, pool_segments
from probe.capture.spec import CaptureSpec
from probe.models.base import ModelAdapter


@dataclass(frozen=True)
class TapPlan:
    """Which module sites to read, in the order the forward pass reaches them."""

    events: tuple[tuple[str, str, int | None], ...]  # (site, "input" | "output", layer)


def envoy_at(root: Any, path: str) -> Any:
    """The nnsight envoy for a dotted module path (numeric parts index module lists)."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _dfs_order(model: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """Pre- and post-order numbers of every module: a module's input precedes its children's, its output follows them."""
    pre: dict[str, int] = {}
    post: dict[str, int] = {}
    counter = 0

    def visit(name: str, module: nn.Module) -> None:
        nonlocal counter
        pre[name] = counter
        counter += 1
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)
        post[name] = counter
        counter += 1

    visit("", model)
    return pre, post


def plan_taps(adapter: ModelAdapter, spec: CaptureSpec) -> TapPlan:
    """Order the requested sites by when the forward pass reaches them (nnsight requires it)."""
    wanted: list[tuple[str, str, int | None]] = []
    if spec.vision:
        wanted.append(("vision.out", "output", None))
    if spec.projector:
        wanted.append(("projector.in", "input", None))
        wanted.append(("projector.out", "output", None))
    if spec.resid:
        for i in spec.resolve_layers(spec.resid_layers, adapter.num_layers):
            wanted.append(("lm.layer.{i}.resid", "output", i))
    pre, post = _dfs_order(adapter.model)

    def when(event: tuple[str, str, int | None]) -> int:
        site, kind, i = event
        path = adapter.sites[site].format(i=i)
        if path not in pre:
            raise KeyError(f"adapter {adapter.name!r}: site {site!r} points at missing module {path!r}")
        return pre[path] if kind == "input" else post[path]

    return TapPlan(tuple(sorted(wanted, key=when)))


def _first_tensor(value: Any) -> torch.Tensor:
    """The main tensor of a module output or input (tuples, ModelOutputs, args/kwargs pairs)."""
    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "last_hidden_state") and value.last_hidden_state is not None:
        return value.last_hidden_state
    if hasattr(value, "pooler_output") and value.pooler_output is not None:  # Qwen-VL visual towers
        return value.pooler_output
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    if isinstance(value, dict) and value:
        return _first_tensor(next(iter(value.values())))
    raise TypeError(f"cannot find a tensor in {type(value).__name__}")


def tap(envoy: Any, adapter: ModelAdapter, spec: CaptureSpec, plan: TapPlan, segments: torch.Tensor,
        query_positions: torch.Tensor) -> dict[str, Any]:
    """Request every planned site inside an nnsight trace; returns saved, already-reduced tensors.

    segments: [batch, seq]; query_positions: [batch, Q] padded positions (-1 absent).
    Keys of the result: "vision_out", "projector_in", "projector_out", and per layer i
    ("resid_query", i), ("resid_pooled", i), ("resid_tokens", i).
    """
    saved: dict[Any, Any] = {}
    for site, kind, i in plan.events:
        node = envoy_at(envoy, adapter.sites[site].format(i=i))
        value = node.input if kind == "input" else node.output
        if site == "lm.layer.{i}.resid":
            hidden = _first_tensor(value)
            if "query" in spec.resid:
                saved[("resid_query", i)] = gather_positions(hidden, query_positions)
            if "pooled" in spec.resid:
                saved[("resid_pooled", i)] = pool_segments(hidden, segments)
            if "tokens" in spec.resid:
                saved[("resid_tokens", i)] = hidden.detach().to(torch.float32)
        else:
            name = {"vision.out": "vision_out", "projector.in": "projector_in", "projector.out": "projector_out"}[site]
            saved[name] = _first_tensor(value).detach().to(torch.float32)
    return nnsight.save(saved)
