"""Activation patching at canonical sites, restricted to a segment, model -> model or input -> input.

Sites: `resid` (a decoder layer's output), `attn` (its attention output, before the residual add), `mlp`
(its MLP output), `projector` (the projected visual tokens). A patch copies the *source* run's activation
into the *target* run at the chosen positions (visual, text, last_prompt or all), so for a clean source and
a corrupt target the normalised effect (patched - corrupt) / (clean - corrupt) on the correct answer's
log-probability is 0 with no effect and 1 with full recovery.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from probe.progress import progress_bar

from interventions._roles import PATCH_SEGMENTS, position_mask
from interventions.base import Intervention
from interventions.score import answer_logprob
from probe.data.example import Example
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment

PATCH_SITES: tuple[str, ...] = ("resid", "attn", "mlp", "projector")
Key = tuple[str, int | None]


def site_module(adapter: ModelAdapter, site: str, layer: int | None = None) -> nn.Module:
    """The module whose output is patch site `site` (at decoder layer `layer`)."""
    if site == "projector":
        return adapter.component("projector")
    if layer is None or not 0 <= layer < adapter.num_layers:
        raise ValueError(f"patch site {site!r} needs a decoder layer in 0..{adapter.num_layers - 1}, got {layer}")
    if site == "resid":
        return adapter.module("lm.layer.{i}.resid", layer)
    if site == "attn":
        return adapter.module("lm.layer.{i}.attn", layer)
    if site == "mlp":
        return adapter.module("lm.layer.{i}.mlp", layer)
    raise ValueError(f"unknown patch site {site!r}; choose from {', '.join(PATCH_SITES)}")


def _main(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_main(output: object, new: torch.Tensor) -> object:
    return (new, *output[1:]) if isinstance(output, tuple) else new


@torch.no_grad()
def record_activations(
    adapter: ModelAdapter, batch: ModelInputs, keys: Sequence[Key], intervention: Intervention | None = None
) -> tuple[dict[Key, torch.Tensor], torch.Tensor]:
    """One forward of `batch`: the main tensor at each (site, layer) in `keys`, and the logits."""
    saved: dict[Key, torch.Tensor] = {}
    handles = []
    for key in keys:
        def hook(module, args, output, key=key):
            saved[key] = _main(output).detach().clone()
        handles.append(site_module(adapter, *key).register_forward_hook(hook))
    try:
        if intervention is not None:
            intervention.set_batch(batch)
            with intervention:
                logits = adapter.model(**batch.inputs).logits
        else:
            logits = adapter.model(**batch.inputs).logits
    finally:
        for h in handles:
            h.remove()
    return saved, logits


def segment_positions(segments: torch.Tensor, segment: str) -> torch.Tensor:
    """[batch, seq] bool of a patch segment: visual, text, last_prompt, or all (every non-pad position)."""
    if segment == "all":
        return segments != Segment.PAD
    if segment not in PATCH_SEGMENTS:
        raise ValueError(f"unknown patch segment {segment!r}; choose from {', '.join(PATCH_SEGMENTS + ('all',))}")
    return position_mask(segments, segment)


class ActivationPatch(Intervention):
    """While installed, site outputs of the target model take the source run's values at the segment's positions.

    `source` comes from `record_activations` on the source model/input; the target batch must have the same
    token layout (same segments). The projector site is patched whole (it holds only visual tokens).
    """

    name = "patch"

    def __init__(self, adapter: ModelAdapter, source: dict[Key, torch.Tensor], site: str, layers: Sequence[int] | None = None,
                 segment: str = "visual") -> None:
        super().__init__()
        if site == "projector" and segment not in ("visual", "all"):
            raise ValueError(f"the projector site holds only visual tokens; segment {segment!r} does not apply")
        self.adapter, self.source, self.site, self.segment = adapter, source, site, segment
        self.keys: list[Key] = [("projector", None)] if site == "projector" else [(site, int(i)) for i in (layers or ())]
        missing = [k for k in self.keys if k not in source]
        if missing:
            raise ValueError(f"activation patch: the source run recorded no {missing[0]}")
        self._positions: torch.Tensor | None = None

    @property
    def is_noop(self) -> bool:
        return not self.keys

    def set_batch(self, batch: ModelInputs) -> None:
        self._positions = segment_positions(batch.segments, self.segment)

    def _install(self) -> Callable[[], None]:
        handles = []
        for key in self.keys:
            def hook(module, args, output, key=key):
                src = self.source[key]
                cur = _main(output)
                if cur.shape != src.shape:
                    raise RuntimeError(f"activation patch at {key}: source {tuple(src.shape)} vs target {tuple(cur.shape)}; "
                                       "the two runs need the same token layout")
                if key[0] == "projector":
                    return _with_main(output, src.to(cur.dtype))
                if self._positions is None:
                    raise RuntimeError("ActivationPatch: call set_batch(batch) before the forward pass")
                pos = self._positions.to(cur.device)[..., None]
                return _with_main(output, torch.where(pos, src.to(cur.device, cur.dtype), cur))
            handles.append(site_module(self.adapter, *key).register_forward_hook(hook))

        def undo() -> None:
            for h in handles:
                h.remove()

        return undo


def patch_sweep(
    clean: ModelAdapter,
    corrupt: ModelAdapter,
    clean_examples: Sequence[Example],
    corrupt_examples: Sequence[Example] | None = None,
    *,
    sites: Sequence[str] = ("resid", "attn", "mlp"),
    layers: Sequence[int] | None = None,
    segments: Sequence[str] = PATCH_SEGMENTS,
    batch_size: int = 8,
    progress: bool = True,
) -> xr.Dataset:
    """Patch the clean run into the corrupt run at every site × layer × segment; the correct answer's log-prob.

    Model -> model: `clean` = base, `corrupt` = fine-tuned, one example list. Input -> input: the same adapter
    twice, `corrupt_examples` e.g. the blank-image versions. Returns per example `clean`, `corrupt`, `patched
    (site, layer, segment, example)` and `projector` (patching the projector output), and the normalised
    `effect` = (mean patched - mean corrupt) / (mean clean - mean corrupt) (NaN where clean = corrupt).
    """
    clean_examples = list(clean_examples)
    corrupt_examples = list(corrupt_examples) if corrupt_examples is not None else clean_examples
    if len(clean_examples) != len(corrupt_examples) or any(ex.answer is None for ex in clean_examples):
        raise ValueError("patch_sweep: clean and corrupt example lists must align, every example with its answer")
    layer_ids = list(range(corrupt.num_layers)) if layers is None else [int(i) for i in layers]
    layer_sites = [s for s in sites if s != "projector"]
    for s in layer_sites:
        site_module(corrupt, s, layer_ids[0] if layer_ids else 0)
    keys: list[Key] = [(s, i) for s in layer_sites for i in layer_ids] + [("projector", None)]
    n = len(clean_examples)
    patched = np.full((len(layer_sites), len(layer_ids), len(segments), n), np.nan)
    proj = np.full(n, np.nan)
    lp_clean, lp_corrupt = np.full(n, np.nan), np.full(n, np.nan)
    device = next(corrupt.model.parameters()).device
    starts = range(0, n, batch_size)
    bar = progress_bar(total=len(starts) * (len(layer_sites) * len(layer_ids) * len(segments) + 1), desc="patch", disable=not progress)
    for start in starts:
        sl = slice(start, min(start + batch_size, n))
        cb = clean.build_inputs(clean_examples[sl], padding_side="right").to(device)
        xb = corrupt.build_inputs(corrupt_examples[sl], padding_side="right").to(device)
        if not torch.equal(cb.segments, xb.segments):
            raise ValueError(f"patch_sweep: examples {sl.start}..{sl.stop - 1} have different token layouts in the two runs")
        labels = xb.labels
        acts, logits = record_activations(clean, cb, keys)
        lp_clean[sl] = answer_logprob(logits, labels).cpu().numpy()
        with torch.no_grad():
            lp_corrupt[sl] = answer_logprob(corrupt.model(**xb.inputs).logits, labels).cpu().numpy()
        for (a, site), (b, layer), (c, seg) in itertools.product(enumerate(layer_sites), enumerate(layer_ids), enumerate(segments)):
            patched[a, b, c, sl] = _patched_logprob(corrupt, xb, ActivationPatch(corrupt, acts, site, [layer], seg))
            bar.update()
        proj[sl] = _patched_logprob(corrupt, xb, ActivationPatch(corrupt, acts, "projector"))
        bar.update()
    bar.close()
    gap = lp_clean.mean() - lp_corrupt.mean()
    effect = (patched.mean(-1) - lp_corrupt.mean()) / gap if gap != 0 else np.full(patched.shape[:-1], np.nan)
    proj_effect = (proj.mean() - lp_corrupt.mean()) / gap if gap != 0 else np.nan
    return xr.Dataset(
        {
            "clean": ("example", lp_clean),
            "corrupt": ("example", lp_corrupt),
            "patched": (("site", "layer", "segment", "example"), patched),
            "projector": ("example", proj),
            "effect": (("site", "layer", "segment"), effect),
            "projector_effect": ((), proj_effect),
        },
        coords={"site": layer_sites, "layer": layer_ids, "segment": list(segments),
                "example": [ex.id for ex in clean_examples]},
        attrs={"reading": "effect: 0 = no effect, 1 = the clean run's answer log-probability fully recovered"},
    )


@torch.no_grad()
def _patched_logprob(adapter: ModelAdapter, batch: ModelInputs, patch: ActivationPatch) -> np.ndarray:
    patch.set_batch(batch)
    with patch:
        logits = adapter.model(**batch.inputs).logits
    return answer_logprob(logits, batch.labels.to(logits.device)).cpu().numpy()
