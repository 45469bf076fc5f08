"""Modality-aware LoRA: per-layer ranks from the base model's visual attention share, checked against peft's matching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from torch import nn

from probe.models.base import ModelAdapter
from train.sft.freeze import freeze_components, lora_target_modules


def layer_visual_share(store: str | Path | xr.Dataset) -> np.ndarray:
    """Per decoder layer, the mean share of attention on visual tokens in a base store: [n_layers].

    This is the proposal's cross-modal integration measure (`attn_share`, higher = more integrated). Huang et
    al.'s MIR (ICCV 2025) is a distance where lower means better integrated; it is not used here.
    """
    from probe.analysis.attention import visual_share
    from probe.store import open_store

    ds = store if isinstance(store, xr.Dataset) else open_store(store).dataset
    share = visual_share(ds).mean(dim=[d for d in ("example", "head", "source") if d in ds["attn_share"].dims])
    layers = [int(v) for v in share["layer"].values]
    if layers != list(range(len(layers))):
        raise ValueError(f"{'store' if isinstance(store, xr.Dataset) else store}: attn_share recorded for layers {layers}; modality-aware ranks need every decoder layer")
    return np.asarray(share.values, dtype=np.float64)


def modality_ranks(shares: np.ndarray, base_r: int) -> list[int]:
    """Rank per layer ∝ its visual share, scaled so the mean rank is `base_r` (same budget as uniform); each >= 1."""
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 1 or not len(s) or not np.all(np.isfinite(s)) or np.any(s < 0) or s.sum() <= 0:
        raise ValueError(f"modality_ranks: need finite non-negative shares with a positive sum, got {s}")
    return [max(1, int(round(base_r * v / s.mean()))) for v in s]


@dataclass(frozen=True)
class LoraPlan:
    """The rank of every LoRA target module (full module names of the unwrapped model) and the α/r ratio."""

    ranks: dict[str, int]
    alpha_over_r: float

    def rank_pattern(self) -> dict[str, int]:
        """peft rank_pattern keys: escaped full names (peft matches keys as regexes, `(.*\\.)?key$`)."""
        return {re.escape(name): r for name, r in self.ranks.items()}

    def alpha_pattern(self) -> dict[str, float]:
        return {re.escape(name): r * self.alpha_over_r for name, r in self.ranks.items()}


def lora_plan(adapter: ModelAdapter, freeze: tuple[str, ...], base_r: int, alpha: float, *,
              layer_ranks: list[int] | None = None, projector_beta: float = 0.0) -> LoraPlan:
    """Decoder Linear modules at `layer_ranks[i]` (default `base_r`), projector Linears at beta × base_r when beta > 0."""
    n = adapter.num_layers
    if layer_ranks is not None and len(layer_ranks) != n:
        raise ValueError(f"lora_plan: {len(layer_ranks)} layer ranks for a {n}-layer decoder")
    ranks: dict[str, int] = {}
    prefix = _layers_prefix(adapter)
    for name in lora_target_modules(adapter, freeze):
        m = re.match(r"(\d+)\.", name[len(prefix):]) if name.startswith(prefix) else None
        layer = int(m.group(1)) if m else None
        ranks[name] = layer_ranks[layer] if (layer_ranks is not None and layer is not None) else base_r
    if projector_beta > 0:
        for comp in freeze_components(adapter, "projector"):
            module = adapter.component(comp)
            if not isinstance(module, nn.Module):
                continue
            prefix = adapter.component_path(comp)
            for sub, mod in module.named_modules():
                if isinstance(mod, nn.Linear):
                    ranks[f"{prefix}.{sub}" if sub else prefix] = max(1, int(round(projector_beta * base_r)))
    if not ranks:
        raise ValueError("LoRA: no Linear layers to adapt (is the decoder frozen?)")
    return LoraPlan(ranks, alpha / base_r)


def _layers_prefix(adapter: ModelAdapter) -> str:
    """Module path up to the decoder layer index, e.g. 'model.language_model.layers.'."""
    first = adapter.component_path("lm.layer.0")
    return first[: -len("0")] if first.endswith("0") else first


def check_patterns(module_names: list[str], plan: LoraPlan) -> None:
    """Raise unless every pattern key selects exactly its own module among `module_names` (peft's own matching).

    peft silently ignores a key that matches nothing, and a bare key like `q_proj` also matches vision-tower
    modules; both would train the wrong ranks without a word.
    """
    from peft.utils.other import get_pattern_key

    keys = list(plan.rank_pattern())
    intended = {re.escape(name): name for name in plan.ranks}
    hits: dict[str, list[str]] = {k: [] for k in keys}
    for name in module_names:
        key = get_pattern_key(keys, name)
        if key in hits:
            hits[key].append(name)
    bad = {k: v for k, v in hits.items() if v != [intended[k]]}
    if bad:
        k, v = next(iter(bad.items()))
        raise ValueError(f"LoRA rank_pattern key {k!r} matched {v[:3]}{'...' if len(v) > 3 else ''} "
                         f"instead of exactly {intended[k]!r} ({len(bad)} bad key(s))")


def wrap_lora(model: nn.Module, plan: LoraPlan, *, dropout: float = 0.0):
    """get_peft_model with the plan's rank/alpha patterns, then verify every wrapped module's rank and scaling."""
    from peft import LoraConfig, get_peft_model

    check_patterns([n for n, _ in model.named_modules()], plan)
    base_r = next(iter(plan.ranks.values()))
    config = LoraConfig(r=base_r, lora_alpha=base_r * plan.alpha_over_r, lora_dropout=dropout,
                        target_modules=list(plan.ranks), rank_pattern=plan.rank_pattern(),
                        alpha_pattern=plan.alpha_pattern())
    peft_model = get_peft_model(model, config)
    got: dict[str, tuple[int, float]] = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "r", {}):
            got[name.removeprefix("base_model.model.")] = (module.r["default"], float(module.scaling["default"]))
    want = {n: (r, plan.alpha_over_r) for n, r in plan.ranks.items()}
    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise ValueError(f"LoRA wrapped modules differ from the plan: missing {missing[:3]}, unexpected {extra[:3]}")
    wrong = [n for n in want if got[n][0] != want[n][0] or abs(got[n][1] - want[n][1]) > 1e-9]
    if wrong:
        raise ValueError(f"LoRA rank/scaling differ from the plan at {wrong[:3]}: got {[got[n] for n in wrong[:3]]}")
    return peft_model
