"""Per-model attention hooks through transformers' public `AttentionInterface`.

A hook runs inside a decoder layer's own attention call, where it can observe the call (the
attention recorder) or change it (attention edits: temperature, logit boosts, knockout, ...).

API
---
    from probe.capture.attention_hook import AttentionCall, attach

    def hook(call: AttentionCall, proceed) -> tuple[Tensor, Tensor | None]:
        # call.layer: the layer's index in the list given to attach; call.module: the attention module
        # call.query [b, heads, q, d], call.key / call.value [b, kv_heads, k, d] (post-RoPE, model dtype)
        # call.attention_mask: exactly what the kernel receives (None, 4-D bool / additive float
        #     [b|1, heads|1, q, k], 2-D [b, k] padding mask for flash-attention)
        # call.scaling (the softmax scale, resolved), call.kwargs: dropout, sliding_window, softcap,
        #     is_causal, position_ids, ... as the model passed them
        out, weights = proceed(call.replace(scaling=call.scaling / 0.8))  # edit, then run the rest
        return out, weights   # out: [b, q, heads, d_v] as the attention kernel returns it

    with attach(adapter.attention_modules, hook, layers=[0, 3]):   # -> Attachment (a context manager)
        model(**inputs)
    # or: handle = attach(...); ...; handle.detach()

- `proceed(call)` runs the hooks attached after this one, then the model's attention kernel
  (sdpa, flash_attention_*, ...). A hook may call it once, several times, or not at all (then
  it computes the output itself). Several hooks on one layer chain in attach order: the first
  attached sees the call first and its `proceed` calls the next. Observers attach with
  `outermost=True` (the recorder does): they run before every other hook whatever the order of
  attaching, so what they measure is the edited attention the model really runs.
- `call.value` may carry extra trailing columns added by an outer hook (the recorder appends the
  segments' one-hot columns so the one kernel call also returns per-segment attention mass; it
  zero-pads query and key to the same width and passes `scaling` explicitly). Treat the width of
  value as opaque, keep the width of query/key equal to it if you call a kernel yourself, and
  return an output as wide as the value you ran with.
  Those widened query/key/value are scratch buffers the recorder reuses for the next layer's call:
  clone what you keep beyond the call.
- How it works: the first attach on a model registers one function under a fresh name
  `visblind<n>+<kernel>` (`AttentionInterface.register`), registers the kernel's own mask builder
  under the same name (`AttentionMaskInterface.register`), so the masks the model builds are
  exactly those of its kernel, and points the decoder's config (`config._attn_implementation`)
  to it. Only that model's decoder layers dispatch there; calls from modules without a hook
  (other layers, another model sharing the config) go straight to the kernel. The name keeps
  the kernel's name in it, because transformers tests substrings of it ("flash", "sdpa").
  When the last hook of that config is detached, the config points back to its kernel and the
  name is unregistered, so the model is bit-identical to one never attached. Registered
  implementations of other names (sdpa, flash, ...) are never replaced.
- The model must run a registered kernel (sdpa, flash_attention_*, flex_attention), not
  'eager' (whose function is private to each modeling file). Tested on CPU with sdpa on every
  tested family; flash-attention goes through the same dispatch and the same mask builder but
  has not been run (no GPU in the session that wrote this).
- A model deep-copied while attached keeps the registered name and fails once it is detached:
  copy before attaching.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

PREFIX = "visblind"
_CALL_FIELDS = ("query", "key", "value", "attention_mask")

Output = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class AttentionCall:
    """One decoder attention call as the kernel would receive it (see the module docstring)."""

    layer: int
    module: nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention_mask: torch.Tensor | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def scaling(self) -> float:
        """The softmax scale the kernel applies (the model's `scaling`, else 1/sqrt(d))."""
        s = self.kwargs.get("scaling")
        return float(s) if s is not None else self.query.shape[-1] ** -0.5

    def replace(self, **changes: Any) -> "AttentionCall":
        """A copy with `changes` applied: query/key/value/attention_mask, or any kernel keyword (scaling, ...)."""
        fields = {k: v for k, v in changes.items() if k in _CALL_FIELDS}
        kwargs = {**self.kwargs, **{k: v for k, v in changes.items() if k not in _CALL_FIELDS}}
        return dataclasses.replace(self, **fields, kwargs=kwargs)


Proceed = Callable[[AttentionCall], Output]


class AttentionHook(Protocol):
    """Runs inside a decoder attention call: observe or change `call`, return the kernel's output."""

    def __call__(self, call: AttentionCall, proceed: Proceed) -> Output: ...


class Attachment:
    """One hook attached to some decoder layers; a context manager that detaches on exit."""

    def __init__(self, hook: AttentionHook, modules: dict[int, nn.Module], outermost: bool = False) -> None:
        self.hook = hook
        self.modules = modules  # layer index -> attention module
        self.outermost = outermost
        self.attached = False

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def detach(self) -> None:
        """Remove the hook; the last hook of a model restores its attention implementation. Idempotent."""
        if not self.attached:
            return
        self.attached = False
        for state in list(_STATES.values()):
            state.remove(self)


def attach(
    attention_modules: Sequence[nn.Module], hook: AttentionHook, layers: Iterable[int] | None = None, *,
    outermost: bool = False,
) -> Attachment:
    """Run `hook` inside the attention call of `attention_modules[i]` for each i in `layers` (default all).

    `outermost`: run before every hook attached without it (observers that must see all edits).
    """
    chosen = list(range(len(attention_modules))) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < len(attention_modules)]
    if bad:
        raise ValueError(f"layers {bad} do not exist among {len(attention_modules)} attention modules")
    modules = {i: attention_modules[i] for i in chosen}
    for i, module in modules.items():
        config = getattr(module, "config", None)
        if config is None:
            raise ValueError(f"attention module of layer {i} ({type(module).__name__}) has no config to dispatch through")
        impl = _base_of(config._attn_implementation)
        if impl == "eager" or impl not in ALL_ATTENTION_FUNCTIONS:
            raise ValueError(
                f"decoder layer {i} runs attention {impl!r}; load the model with attn_implementation='sdpa' "
                "(or a flash-attention kernel) to hook attention"
            )
    attachment = Attachment(hook, modules, outermost)
    for i, module in modules.items():
        state = _STATES.get(id(module.config)) or _ConfigState.install(module.config)
        state.add(attachment, i, module)
    attachment.attached = True
    return attachment


def _base_of(name: str | None) -> str | None:
    """The kernel name inside one of our registered names (or the name itself)."""
    if name is not None and name.startswith(PREFIX) and "+" in name:
        return name.split("+", 1)[1]
    return name


_counter = itertools.count()
_STATES: dict[int, "_ConfigState"] = {}  # id(decoder config) -> its dispatch state


@dataclass
class _ConfigState:
    """The registered dispatch function of one decoder config and the hooks per attention module."""

    config: Any
    base: str
    name: str
    base_fn: Callable
    hooks: dict[int, list[tuple[int, Attachment]]] = field(default_factory=dict)  # id(module) -> [(layer, attachment)]

    @classmethod
    def install(cls, config: Any) -> "_ConfigState":
        base = config._attn_implementation
        state = cls(config, base, f"{PREFIX}{next(_counter)}+{base}", ALL_ATTENTION_FUNCTIONS[base])
        names = list(inspect.signature(state.base_fn).parameters)[1:]  # after `module`

        def dispatch(module: nn.Module, *args: Any, **kwargs: Any) -> Output:
            entries = state.hooks.get(id(module))
            if not entries:
                return state.base_fn(module, *args, **kwargs)
            bound = dict(zip(names, args))
            bound.update(kwargs)
            call = AttentionCall(entries[0][0], module, *(bound.pop(k, None) for k in _CALL_FIELDS), kwargs=bound)
            return state.run(list(entries), 0, call)

        AttentionInterface.register(state.name, dispatch)
        if base in ALL_MASK_ATTENTION_FUNCTIONS:  # a kernel without a mask builder gets none under our name either
            AttentionMaskInterface.register(state.name, ALL_MASK_ATTENTION_FUNCTIONS[base])
        config._attn_implementation = state.name
        _STATES[id(config)] = state
        return state

    def run(self, entries: list[tuple[int, Attachment]], i: int, call: AttentionCall) -> Output:
        """Hook i of `entries` with a `proceed` into hook i+1, the last one into the kernel."""
        if i == len(entries):
            kw = call.kwargs
            return self.base_fn(call.module, call.query, call.key, call.value, call.attention_mask, **kw)
        layer, attachment = entries[i]
        return attachment.hook(dataclasses.replace(call, layer=layer), lambda c: self.run(entries, i + 1, c))

    def add(self, attachment: Attachment, layer: int, module: nn.Module) -> None:
        entries = self.hooks.setdefault(id(module), [])
        if attachment.outermost:  # after the outermost ones already there, before every other hook
            entries.insert(sum(1 for _, a in entries if a.outermost), (layer, attachment))
        else:
            entries.append((layer, attachment))

    def remove(self, attachment: Attachment) -> None:
        for key in list(self.hooks):
            self.hooks[key] = [e for e in self.hooks[key] if e[1] is not attachment]
            if not self.hooks[key]:
                del self.hooks[key]
        if self.hooks:
            return
        if self.config._attn_implementation == self.name:  # unless the user switched it meanwhile
            self.config._attn_implementation = self.base
        # GeneralInterface has no public unregister: drop our own name from the class-wide mappings
        # so the process-wide registry ends as it began (tested: test_attention_hook.py::test_registry_restored)
        AttentionInterface._global_mapping.pop(self.name, None)
        AttentionMaskInterface._global_mapping.pop(self.name, None)
        del _STATES[id(self.config)]
