"""The words every package shares, defined once: the example's independent unit and coordinates, the query
sources and position sets, and the site vocabulary (one name per place in the model, mapped to TransformerLens).

Capture, evaluation, analyses, the experiment runner, training tables and the dashboard import these; none
re-derives them (docs/store-schema.md, "Shared vocabulary").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `import probe.vocab` stays light
    import torch

    from probe.data.example import Example

# --- examples ------------------------------------------------------------------------------------------------

# The per-example fields every dataset over examples carries, under these names. A store names them bare on its
# `example` dim; a result dataset that also tabulates by some of them (an evaluation has `lang` and
# `question_type` dims for its aggregates, so xarray cannot hold a `lang` coordinate on `example` beside them)
# names the per-example copy `example_<field>`. `example_field` reads either.
EXAMPLE_FIELDS: tuple[str, ...] = ("lang", "condition", "question_type", "image_dependent", "group")
RESULT_PREFIX = "example_"


def unit_of(example: "Example") -> str:
    """The independent resampling unit: the manifest `group`, else `labels["group"]`, else the image path, else the id.

    One image asked in English and in Korean is one unit (same path). An example whose image is already open (no
    path) is its own unit unless it names a group.
    """
    group = example.group if example.group is not None else example.labels.get("group")
    if group is not None and str(group) != "":
        return str(group)
    return str(example.image) if isinstance(example.image, (str, Path)) else str(example.id)


def image_dependent_of(example: "Example") -> bool:
    """Whether the example's question needs the image: True unless the manifest says `image_dependent: false`."""
    return example.image_dependent is not False


def example_coords(examples: Sequence["Example"], *, prefix: str = "") -> dict[str, list]:
    """The shared per-example coordinates {prefix + field: values} (EXAMPLE_FIELDS, `group` = `unit_of`)."""
    return {
        f"{prefix}lang": [str(ex.lang) for ex in examples],
        f"{prefix}condition": [str(ex.condition) for ex in examples],
        f"{prefix}question_type": [str(ex.question_type) for ex in examples],
        f"{prefix}image_dependent": [image_dependent_of(ex) for ex in examples],
        f"{prefix}group": [unit_of(ex) for ex in examples],
    }


def example_field(ds: Any, field: str) -> np.ndarray:
    """Per-example values of a shared field from a store (`field`) or a result dataset (`example_<field>`)."""
    if field not in EXAMPLE_FIELDS:
        raise KeyError(f"{field!r} is not a shared example field ({', '.join(EXAMPLE_FIELDS)})")
    for name in (RESULT_PREFIX + field, field):
        if name in ds.coords and ds[name].dims == ("example",):
            values = np.asarray(ds[name].values)
            if field == "image_dependent":
                return values.astype(bool)
            return np.array([str(v) for v in values.tolist()], dtype=str)  # any string dtype zarr hands back
    raise KeyError(f"dataset has no per-example {field!r} (looked for {RESULT_PREFIX + field!r} and {field!r})")


# --- query sources and position sets --------------------------------------------------------------------------

# What each name selects in a batch's `Segment` codes (probe.segments):
#   last_prompt: the last non-pad, non-answer position (the query that predicts the first answer token)
#   answer:      ANSWER positions (the teacher-forced answer tokens)
#   text:        TEXT positions: the prompt's text (chat scaffolding included); never the answer, never image markers
#   visual:      VISUAL positions (the projector's tokens in the decoder)
# A query source is a position set whose queries capture averages attention over (store dim `source`) and that an
# attention edit selects (interventions' `queries=`); `visual` is a position set only (patching, pooling).
QUERY_SOURCES: tuple[str, ...] = ("last_prompt", "answer", "text")
POSITION_SETS: tuple[str, ...] = (*QUERY_SOURCES, "visual")


def position_mask(segments: "torch.Tensor", which: str) -> "torch.Tensor":
    """[batch, seq] bool of the positions of position set `which` (POSITION_SETS) in Segment codes [batch, seq]."""
    import torch

    from probe.segments import Segment, last_prompt_index

    if which == "last_prompt":
        idx = last_prompt_index(segments)
        out = torch.zeros_like(segments, dtype=torch.bool)
        rows = (idx >= 0).nonzero().flatten()
        out[rows, idx[rows]] = True
        return out
    codes = {"answer": Segment.ANSWER, "text": Segment.TEXT, "visual": Segment.VISUAL}
    if which not in codes:
        raise ValueError(f"unknown position set {which!r}; choose from {', '.join(POSITION_SETS)}")
    return segments == codes[which]


def query_mask(segments: "torch.Tensor", sources: Iterable[str]) -> "torch.Tensor":
    """[batch, seq] bool: the union of the query `sources` (QUERY_SOURCES)."""
    import torch

    sources = list(sources)
    bad = [s for s in sources if s not in QUERY_SOURCES]
    if bad:
        raise ValueError(f"unknown query source {bad[0]!r}; choose from {', '.join(QUERY_SOURCES)}")
    out = torch.zeros_like(segments, dtype=torch.bool)
    for s in sources:
        out |= position_mask(segments, s)
    return out


# --- sites ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One place in the model: its canonical name, what it is, and its TransformerLens hook (None: TL has none)."""

    name: str
    meaning: str
    tl_hook: str | None = None


def _sites(*entries: Site) -> dict[str, Site]:
    return {s.name: s for s in entries}


# Canonical site names (adapters map them to module paths; `{i}` is the decoder layer). Capture's recordables,
# activation patching and the TransformerLens interop speak these names; TL names come from this table only.
SITES: Mapping[str, Site] = _sites(
    Site("vision.out", "the vision tower's output rows"),
    Site("projector.in", "the projector's input rows"),
    Site("projector.out", "the projector's output: the visual tokens the decoder receives"),
    Site("deepstack.{i}", "Qwen3-VL: the visual rows DeepStack adds to decoder layer i's output"),
    Site("lm.layer.{i}.resid", "decoder layer i's output (residual stream after the layer)", "blocks.{i}.hook_resid_post"),
    Site("lm.layer.{i}.attn", "decoder layer i's attention output, before the residual add", "blocks.{i}.hook_attn_out"),
    Site("lm.layer.{i}.mlp", "decoder layer i's MLP output, before the residual add", "blocks.{i}.hook_mlp_out"),
    Site("lm.layer.{i}.attn.pattern", "decoder layer i's attention probabilities", "blocks.{i}.attn.hook_pattern"),
    Site("lm.layer.{i}.attn.q", "decoder layer i's queries after RoPE", "blocks.{i}.attn.hook_rot_q"),
    Site("lm.layer.{i}.attn.k", "decoder layer i's keys after RoPE", "blocks.{i}.attn.hook_rot_k"),
)


def tl_hook(site: str, layer: int | None = None) -> str | None:
    """The TransformerLens hook name of canonical `site` (with `{i}` filled by `layer`, else left as `{layer}`)."""
    if site not in SITES:
        raise KeyError(f"unknown site {site!r}; known: {', '.join(SITES)}")
    hook = SITES[site].tl_hook
    if hook is None:
        return None
    return hook.format(i=layer) if layer is not None else hook.replace("{i}", "{layer}")


# Short names some commands accept for a site (activation patching's `resid`, `attn`, `mlp`, `projector`).
SITE_ALIASES: Mapping[str, str] = {
    "resid": "lm.layer.{i}.resid", "attn": "lm.layer.{i}.attn", "mlp": "lm.layer.{i}.mlp", "projector": "projector.out",
}


def canonical_site(name: str) -> str:
    """The canonical site of `name` (a canonical name or a SITE_ALIASES short name); KeyError listing both."""
    if name in SITES:
        return name
    if name in SITE_ALIASES:
        return SITE_ALIASES[name]
    raise KeyError(f"unknown site {name!r}; known: {', '.join([*SITES, *SITE_ALIASES])}")


def to_str(values: Any) -> np.ndarray:
    """Plain unicode array from any string-like array (incl. numpy StringDType, as the TraceStore writes)."""
    return np.array([str(v) for v in np.asarray(values).ravel()], dtype=str).reshape(np.shape(values))
