"""The recorded quantities: one registry entry each, from which taps, collection and store variables derive.

An entry says where a quantity is read (an adapter site, the attention call, or the batch's own
inputs), how it is reduced, its store dims and dtype, its TransformerLens hook name and how its
variable-length dims are sized. Adding a quantity is one `register(Recordable(...))` call here;
`CaptureSpec.extra` switches on entries that have no dedicated spec field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from probe.capture.reduce import gather_positions, pool_segments
from probe.vocab import tl_hook as _tl  # TransformerLens names: one table (probe.vocab.SITES)

if TYPE_CHECKING:
    from probe.capture.session import BatchView
    from probe.capture.spec import CaptureSpec

# where a quantity comes from
INPUTS = "inputs"        # the batch alone (token ids, segments): no forward needed
ATTENTION = "attention"  # the attention recorder, inside each selected decoder layer's attention call
MODULE = "module"        # an nnsight tap on an adapter site (module input or output)


@dataclass(frozen=True)
class Recordable:
    """One recorded quantity.

    name: store variable; source: INPUTS | ATTENTION | MODULE; site: adapter site read (MODULE, ATTENTION);
    io: "input" | "output" of the site's module (MODULE); reduction: what is kept, in words;
    dims: store dims after `example` (a leading `layer` means one row per selected layer);
    dtype: a store dtype or "spec" (CaptureSpec.dtype); fill: value of absent entries;
    tl_hook: the TransformerLens hook name, or None; wanted: whether a CaptureSpec asks for it;
    reduce: (site tensor [batch, ...], segments [batch, seq], query positions [batch, Q]) -> tensor [batch, ...],
      applied inside the forward (MODULE);
    row: (batch view, example index) -> one example's array in store layout (dims as above);
    grows: dims whose size follows the data -> the rule that sizes them at store creation:
      "position" (longest checked sequence) or "visual:<site>" (most rows any checked example has at that site).
      Every other dim is sized from the first collected row.
    """

    name: str
    source: str
    dims: tuple[str, ...]
    dtype: str
    fill: float | int
    wanted: Callable[["CaptureSpec"], bool]
    row: Callable[["BatchView", int], np.ndarray]
    site: str | None = None
    io: str = "output"
    reduction: str = ""
    tl_hook: str | None = None
    reduce: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    grows: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in (INPUTS, ATTENTION, MODULE):
            raise ValueError(f"recordable {self.name!r}: unknown source {self.source!r}")
        if self.source != INPUTS and self.site is None:
            raise ValueError(f"recordable {self.name!r}: a {self.source} quantity needs a site")
        if self.source == MODULE and self.reduce is None:
            raise ValueError(f"recordable {self.name!r}: a module quantity needs a reduce")
        if self.io not in ("input", "output"):
            raise ValueError(f"recordable {self.name!r}: io must be 'input' or 'output', got {self.io!r}")

    @property
    def per_layer(self) -> bool:
        return bool(self.dims) and self.dims[0] == "layer"

    def store_dtype(self, spec: "CaptureSpec") -> str:
        return spec.dtype if self.dtype == "spec" else self.dtype


RECORDABLES: dict[str, Recordable] = {}


def register(rec: Recordable) -> Recordable:
    """Add an entry; a second entry under one name is an error."""
    if rec.name in RECORDABLES:
        raise ValueError(f"recordable {rec.name!r} is already registered")
    RECORDABLES[rec.name] = rec
    return rec


def selected(spec: "CaptureSpec") -> list[Recordable]:
    """The entries `spec` asks for, in registry order."""
    unknown = [n for n in spec.extra if n not in RECORDABLES]
    if unknown:
        raise ValueError(f"CaptureSpec.extra names unknown recordables {unknown}; known: {sorted(RECORDABLES)}")
    return [r for r in RECORDABLES.values() if r.wanted(spec) or r.name in spec.extra]


def tl_sites() -> dict[str, str]:
    """Store variable -> TransformerLens hook name, for the quantities that have one."""
    return {r.name: r.tl_hook for r in RECORDABLES.values() if r.tl_hook}


# --- per-example readers (the batch view does the unpadding) -----------------------------------------------

def _attention(attr: str, position_axis: int | None) -> Callable[["BatchView", int], np.ndarray]:
    def row(view: "BatchView", b: int) -> np.ndarray:
        return view.by_layer(lambda i: view.unpad(getattr(view.attention[i], attr)[b], b, position_axis))
    return row


def _saved_layers(name: str, position_axis: int | None) -> Callable[["BatchView", int], np.ndarray]:
    def row(view: "BatchView", b: int) -> np.ndarray:
        return view.by_layer(lambda i: view.unpad(view.saved[(name, i)][b], b, position_axis))
    return row


def _visual(name: str, site: str) -> Callable[["BatchView", int], np.ndarray]:
    def row(view: "BatchView", b: int) -> np.ndarray:
        return view.visual(name, site)[b].float().cpu().numpy()
    return row


def _visual_layers(name: str, site: str) -> Callable[["BatchView", int], np.ndarray]:
    """Per selected layer, example b's visual rows of a per-layer visual site; NaN at layers without the site."""
    def row(view: "BatchView", b: int) -> np.ndarray:
        rows = {i: view.visual(name, site, i)[b] for i in view.layers if (name, i) in view.saved}
        absent = torch.full((view.n_visual[b], view.adapter.hidden_size), float("nan"))
        return view.by_layer(lambda i: rows.get(i, absent))
    return row


def _layout(attr: str, dtype: type) -> Callable[["BatchView", int], np.ndarray]:
    def row(view: "BatchView", b: int) -> np.ndarray:
        return np.asarray(getattr(view.layout[b], attr), dtype=dtype)
    return row


def _whole(t: torch.Tensor, segments: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32)


# --- the registry ------------------------------------------------------------------------------------------

register(Recordable(
    "seq_len", INPUTS, (), "int32", -1, lambda s: True,
    lambda v, b: np.int32(v.lengths[b]), reduction="unpadded sequence length"))
register(Recordable(
    "segment_ids", INPUTS, ("position",), "int8", -1, lambda s: True,
    lambda v, b: v.unpad(v.segments[b].to(torch.float32), b, 0, fill=-1).numpy().astype(np.int8),
    reduction="Segment code per position", grows={"position": "position"}))
register(Recordable(
    "input_ids", INPUTS, ("position",), "int64", -1, lambda s: True,
    lambda v, b: v.token_ids(b), reduction="token id per position (the decoder's input_ids)",
    grows={"position": "position"}))
register(Recordable(
    "token", INPUTS, ("position",), "str", "", lambda s: True,
    lambda v, b: v.token_strings(b), reduction="decoded token per position: tokenizer.decode([id])",
    grows={"position": "position"}))
register(Recordable(
    "query_position", INPUTS, ("query",), "int32", -1, lambda s: True,
    lambda v, b: v.query_positions(b), reduction="unpadded position of each query slot"))
register(Recordable(
    "n_vtoken", INPUTS, (), "int32", -1, lambda s: True,
    lambda v, b: np.int32(v.n_visual[b]), reduction="number of visual positions"))

# where each visual position came from (adapter.visual_layout), aligned with projector_out's rows
_VTOKEN = {"vtoken": "visual:projector.out"}
for _attr in ("tile", "row", "col"):
    register(Recordable(
        f"visual_{_attr}", INPUTS, ("vtoken",), "int32", -1, lambda s: True, _layout(_attr, np.int32),
        reduction=f"{_attr} of each visual position (tile index; row / col in its tile's token grid, -1 for none)",
        grows=_VTOKEN))
register(Recordable(
    "visual_box", INPUTS, ("vtoken", "corner"), "float32", np.nan, lambda s: True, _layout("box", np.float32),
    reduction="x0, y0, x1, y1 of each visual position's region in original-image pixels", grows=_VTOKEN))
register(Recordable(
    "visual_tile_box", INPUTS, ("vtoken", "corner"), "float32", np.nan, lambda s: True,
    _layout("tile_box", np.float32), reduction="x0, y0, x1, y1 of its tile in original-image pixels", grows=_VTOKEN))
register(Recordable(
    "image_size", INPUTS, ("hw",), "int32", -1, lambda s: True, _layout("image_size", np.int32),
    reduction="original image (height, width)"))

register(Recordable(
    "attn_share", ATTENTION, ("layer", "head", "source", "segment"), "float32", np.nan, lambda s: s.attn_share,
    _attention("share", None), site="lm.layer.{i}.attn", tl_hook=_tl("lm.layer.{i}.attn.pattern"),
    reduction="mean over a source's queries of the attention mass per key segment"))
register(Recordable(
    "attn_pattern", ATTENTION, ("layer", "head", "query", "position"), "float32", np.nan, lambda s: s.attn_pattern,
    _attention("rows", -1), site="lm.layer.{i}.attn", tl_hook=_tl("lm.layer.{i}.attn.pattern"),
    reduction="attention rows of the query slots", grows={"position": "position"}))
register(Recordable(
    "hook_rot_k", ATTENTION, ("layer", "kv_head", "position", "d_head"), "spec", np.nan, lambda s: s.keys,
    _attention("keys", 1), site="lm.layer.{i}.attn", tl_hook=_tl("lm.layer.{i}.attn.k"),
    reduction="keys after RoPE at every position", grows={"position": "position"}))
register(Recordable(
    "hook_rot_q", ATTENTION, ("layer", "head", "position", "d_head"), "spec", np.nan, lambda s: s.queries,
    _attention("queries", 1), site="lm.layer.{i}.attn", tl_hook=_tl("lm.layer.{i}.attn.q"),
    reduction="queries after RoPE at every position", grows={"position": "position"}))

register(Recordable(
    "hook_resid_post", MODULE, ("layer", "query", "feature"), "spec", np.nan, lambda s: "query" in s.resid,
    _saved_layers("hook_resid_post", None), site="lm.layer.{i}.resid", tl_hook=_tl("lm.layer.{i}.resid"),
    reduce=lambda h, seg, q: gather_positions(h, q), reduction="residual stream at the query slots"))
register(Recordable(
    "hook_resid_post_pooled", MODULE, ("layer", "segment", "feature"), "spec", np.nan, lambda s: "pooled" in s.resid,
    _saved_layers("hook_resid_post_pooled", None), site="lm.layer.{i}.resid",
    tl_hook=_tl("lm.layer.{i}.resid"), reduce=lambda h, seg, q: pool_segments(h, seg),
    reduction="residual stream mean per segment"))
register(Recordable(
    "hook_resid_post_tokens", MODULE, ("layer", "position", "feature"), "spec", np.nan, lambda s: "tokens" in s.resid,
    _saved_layers("hook_resid_post_tokens", 0), site="lm.layer.{i}.resid", tl_hook=_tl("lm.layer.{i}.resid"),
    reduce=_whole, reduction="residual stream at every position", grows={"position": "position"}))

register(Recordable(
    "projector_in", MODULE, ("vtoken_in", "feature_in"), "spec", np.nan, lambda s: s.projector,
    _visual("projector_in", "projector.in"), site="projector.in", io="input", reduce=_whole,
    reduction="projector input rows per example", grows={"vtoken_in": "visual:projector.in"}))
register(Recordable(
    "projector_out", MODULE, ("vtoken", "feature"), "spec", np.nan, lambda s: s.projector,
    _visual("projector_out", "projector.out"), site="projector.out", reduce=_whole,
    reduction="projector output rows per example (the visual tokens entering the decoder)",
    grows={"vtoken": "visual:projector.out"}))
register(Recordable(
    "deepstack_out", MODULE, ("layer", "vtoken", "feature"), "spec", np.nan, lambda s: s.projector,
    _visual_layers("deepstack_out", "deepstack.{i}"), site="deepstack.{i}", reduce=_whole,
    reduction="rows DeepStack adds to each layer's output at the visual positions (Qwen3-VL; NaN at other layers)",
    grows={"vtoken": "visual:projector.out"}))
register(Recordable(
    "vision_out", MODULE, ("vpatch", "feature_vision"), "spec", np.nan, lambda s: s.vision,
    _visual("vision_out", "vision.out"), site="vision.out", reduce=_whole,
    reduction="vision tower output rows per example", grows={"vpatch": "visual:vision.out"}))

