"""Module taps through nnsight: residual stream, projector and vision tower, reduced in the forward.

Taps are requested from an nnsight envoy inside a trace, so a user's own `model.trace(...)`
edits and our capture run in one forward pass: put the edits in one invoke and `tap(...)` in an
empty invoke (`with tracer.invoke(): ...`), which nnsight applies to the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from torch import nn

from probe.capture.recordables import MODULE, Recordable
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


def plan_taps(adapter: ModelAdapter, recordables: Sequence[Recordable], layers: Sequence[int]) -> TapPlan:
    """The module sites the MODULE recordables read, ordered by when the forward pass reaches them (nnsight requires it)."""
    wanted: list[tuple[str, str, int | None]] = []
    for rec in recordables:
        if rec.source != MODULE:
            continue
        # per-layer sites: the selected layers at which the site exists (Qwen3-VL's deepstack.{i} at a few only)
        at = set(adapter.site_layers(rec.site)) if "{i}" in rec.site else set()
        for i in ([i for i in layers if i in at] if "{i}" in rec.site else (None,)):
            if (rec.site, rec.io, i) not in wanted:
                wanted.append((rec.site, rec.io, i))
    pre, post = _dfs_order(adapter.model)

    def when(event: tuple[str, str, int | None]) -> tuple[int, int, int]:
        site, kind, i = event
        path = adapter.sites[site].format(i=i)
        if path not in pre:
            raise KeyError(f"adapter {adapter.name!r}: site {site!r} points at missing module {path!r}")
        number = pre[path] if kind == "input" else post[path]
        anchor = adapter.runs_after.get(path)  # declared elsewhere, called right after `anchor` (Qwen3-VL's DeepStack)
        return (post[anchor], 1, number) if anchor else (number, 0, 0)

    return TapPlan(tuple(sorted(wanted, key=when)))


def tap(envoy: Any, adapter: ModelAdapter, recordables: Sequence[Recordable], plan: TapPlan, segments: torch.Tensor,
        query_positions: torch.Tensor) -> dict[Any, Any]:
    """Request every planned site inside an nnsight trace; returns saved, already-reduced tensors.

    segments: [batch, seq]; query_positions: [batch, Q] padded positions (-1 absent).
    Keys of the result: the recordable's name, or (name, layer) for per-layer sites.
    """
    saved: dict[Any, Any] = {}
    for site, kind, i in plan.events:
        node = envoy_at(envoy, adapter.sites[site].format(i=i))
        tensor = adapter.site_tensor(site, node.input if kind == "input" else node.output)
        for rec in recordables:
            if rec.source == MODULE and rec.site == site and rec.io == kind:
                saved[rec.name if i is None else (rec.name, i)] = rec.reduce(tensor, segments, query_positions)
    return nnsight.save(saved)
