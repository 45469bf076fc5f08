"""Attention edits on visual keys, computed inside the decoder's attention call (the model keeps running SDPA).

While installed, a hook runs inside each chosen decoder layer's attention call
(`probe.capture.attention_hook.attach`, the mechanism the capture recorder uses): it first runs the
model's kernel, then recomputes exactly the rows of the chosen queries and heads — logits from the
call's own post-RoPE q/k and mask, in float32 — applies the edit, and writes softmax(edited) @ V
over those rows of the kernel's output. Cost grows with the number of edited query rows, not T².

    boost = Boost(adapter, alpha=0.2)          # PAI defaults: layers 2 onward, last query
    with boost:
        boost.set_batch(batch)
        logits = adapter.model(**batch.inputs).logits

Edits (each `edit` maps masked logits [batch, head, n, seq] to probabilities):
- `Boost`: a <- a + alpha·|a| on visual keys (Liu et al., "Paying More Attention to Image", ECCV 2024;
  LALBJ/PAI attention.py applies it to the last query's image logits after the mask, layers 2+).
- `Temperature`: a <- a·scale on visual keys (AdaptVis, Chen et al. 2025: scaling the image-token logits;
  their confidence gate that picks the scale per example is left to the caller).
- `Knockout`: visual keys masked out (-inf) for the chosen queries.
- `VAR`: Kang et al., ICLR 2025 (MICV-yonsei/VisAttnSink), see its docstring.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from interventions._roles import padded_positions, query_mask
from interventions.base import Intervention, register_intervention
from probe.capture.attention_hook import AttentionCall, attach
from probe.models.base import ModelAdapter, ModelInputs
from probe.segments import Segment, last_prompt_index


def _layers(adapter: ModelAdapter, layers: Sequence[int] | int | None, default_start: int = 0) -> tuple[int, ...]:
    """Layer indices: None -> default_start.., an int -> that layer onward, a sequence -> those (checked)."""
    n = adapter.num_layers
    if layers is None:
        chosen = tuple(range(min(default_start, n), n))
    elif isinstance(layers, int):
        chosen = tuple(range(layers, n))
    else:
        chosen = tuple(sorted({int(i) for i in layers}))
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the decoder has {n} layers")
    return chosen


class AttentionEdit(Intervention):
    """Base of the edits: which layers, heads and queries; subclasses define `edit`.

    layers: None (the edit's default), an int (that layer onward) or indices; heads: None (all) or indices;
    queries: any of "last_prompt", "answer", "text" — the default ("last_prompt", "answer") is every
    position that predicts an answer token, i.e. PAI's "last query" at each generation step.
    """

    default_start: int = 0

    def __init__(
        self,
        adapter: ModelAdapter,
        *,
        layers: Sequence[int] | int | None = None,
        heads: Sequence[int] | None = None,
        queries: Sequence[str] = ("last_prompt", "answer"),
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.layers = _layers(adapter, layers, self.default_start)
        n_heads = adapter.num_heads
        self.heads = tuple(range(n_heads)) if heads is None else tuple(sorted({int(h) for h in heads}))
        if any(not 0 <= h < n_heads for h in self.heads):
            raise ValueError(f"heads {list(self.heads)} out of range: the decoder has {n_heads} heads")
        self.queries = tuple(queries)
        query_mask(torch.zeros((1, 1), dtype=torch.long), self.queries)  # validates the names
        self._segments: torch.Tensor | None = None
        self._qpos: torch.Tensor | None = None
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    # --- per batch ---------------------------------------------------------------
    def set_batch(self, batch: ModelInputs) -> None:
        """Token roles of the next forward: which queries to edit, which keys are visual.

        Everything the edit needs from the batch is computed here, once, on the batch's device (give the batch on
        the model's device): the forward then reads nothing on the host.
        """
        self._segments = batch.segments.long()
        self._qpos = padded_positions(query_mask(self._segments, self.queries))
        self._on_device = {}
        self._prepare(self._segments.device)

    def _prepare(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The batch's constants on `device`: segments, visual keys, the edited rows and where they are written."""
        if device not in self._on_device:
            segments, qpos = self._segments.to(device), self._qpos.to(device)
            present = qpos >= 0
            # absent slots (-1, rows with fewer queries) write the row's first slot again with its value, or, in a
            # row without any, position 0 with the kernel's own value: every write is determined, none reads on the host
            first = torch.where(present[:, :1], qpos[:, :1], 0)
            self._on_device[device] = {
                "segments": segments, "qpos": torch.where(present, qpos, first), "present": present,
                "visual": (segments == Segment.VISUAL)[:, None, None, :],
                "heads": torch.tensor(self.heads, device=device),
                "rows": torch.arange(segments.shape[0], device=device)[:, None, None],
            }
        return self._on_device[device]

    # --- the edit ------------------------------------------------------------------
    def edit(self, logits: torch.Tensor, visual: torch.Tensor, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Masked logits [batch, head, n, seq] float32 (-inf where masked), visual keys [batch, 1, 1, seq] bool
        -> attention probabilities [batch, head, n, seq]. `rows` [batch, n] are the queries' positions."""
        raise NotImplementedError

    # --- install -------------------------------------------------------------------
    def _install(self) -> Callable[[], None]:
        return attach(self.adapter.attention_modules, self._hook, self.layers).detach

    def _hook(self, call: AttentionCall, proceed: Callable[[AttentionCall], tuple]) -> tuple:
        out, weights = proceed(call)
        if self.paused:
            return out, weights
        return self._apply(call, out), weights

    def _apply(self, call: AttentionCall, out: torch.Tensor) -> torch.Tensor:
        layer = call.layer
        if self._segments is None or self._qpos is None:
            raise RuntimeError(f"{type(self).__name__}: call set_batch(batch) before the forward pass")
        query, key, value = call.query, call.key, call.value
        batch, n_heads, q_len, _ = query.shape
        if (batch, q_len) != tuple(self._segments.shape) or key.shape[2] != q_len:
            raise RuntimeError(
                f"decoder layer {layer}: attention call has batch {batch} and {q_len} queries / {key.shape[2]} keys, but the "
                f"batch set has segments {tuple(self._segments.shape)}; attention edits need one full forward (no cache)"
            )
        if self._qpos.shape[1] == 0:
            return out
        dev = self._prepare(query.device)
        segments, safe, heads = dev["segments"], dev["qpos"], dev["heads"]
        groups = n_heads // key.shape[1]
        d = query.shape[-1]
        q = query[:, heads].gather(2, safe[:, None, :, None].expand(batch, len(self.heads), safe.shape[1], d)).float()
        k = key.repeat_interleave(groups, dim=1)[:, heads].float()
        # an outer hook (the recorder) may have widened value with segment one-hot columns: the edited rows then
        # carry the edited attention's segment mass to it, so what is recorded is the edited attention
        v = value.repeat_interleave(groups, dim=1)[:, heads].float()
        logits = (q @ k.transpose(-1, -2)) * call.scaling
        softcap = call.kwargs.get("softcap")
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logits = _masked(logits, call, segments, safe)
        probs = self.edit(logits, dev["visual"], layer, safe)
        rows = (probs @ v).transpose(1, 2).to(out.dtype)  # [batch, n, heads, d_v]
        index = (dev["rows"], safe[:, :, None], heads[None, None, :])
        present = dev["present"][:, :, None, None]
        # absent slots repeat the row's first slot (same position, same value) or keep the kernel's value
        rows = torch.where(present, rows, torch.where(present[:, :1], rows[:, :1], out[index]))
        return out.index_put(index, rows)


def _masked(logits: torch.Tensor, call: AttentionCall, segments: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Apply the call's mask to the logits rows of the queries at `pos` ([batch, n]); -inf where a key is hidden."""
    batch, _, n, kv = logits.shape
    mask = call.attention_mask
    if mask is None:
        is_causal = call.kwargs.get("is_causal")
        causal = bool(is_causal if is_causal is not None else getattr(call.module, "is_causal", True))
        allowed = (segments != Segment.PAD)[:, None, None, :].expand(batch, 1, n, kv)
        if causal:
            allowed = allowed & (torch.arange(kv, device=pos.device) <= pos[:, None, :, None])
        if call.kwargs.get("sliding_window") or getattr(call.module, "sliding_window", None):
            raise NotImplementedError("attention edits do not support sliding-window attention yet")
        return logits.masked_fill(~allowed, float("-inf"))
    if mask.dim() != 4:
        raise NotImplementedError(f"attention edits support 4-D masks, got shape {tuple(mask.shape)}")
    m = mask[..., :kv].expand(batch, mask.shape[1], mask.shape[2], kv)
    rows = m.gather(2, pos[:, None, :, None].expand(batch, m.shape[1], n, kv))
    if rows.dtype == torch.bool:
        return logits.masked_fill(~rows, float("-inf"))
    return logits + rows.float()


@register_intervention
class Boost(AttentionEdit):
    """PAI: a <- a + alpha·|a| on the logits of visual keys (default alpha 0.2, layers 2 onward)."""

    name = "boost"
    default_start = 2

    def __init__(self, adapter: ModelAdapter, alpha: float = 0.2, **kw: Any) -> None:
        if not alpha >= 0:
            raise ValueError(f"boost alpha must be >= 0, got {alpha}")
        super().__init__(adapter, **kw)
        self.alpha = float(alpha)

    @property
    def is_noop(self) -> bool:
        return self.alpha == 0 or not self.layers

    def edit(self, logits, visual, layer, rows):
        boosted = logits + self.alpha * logits.abs()
        return torch.softmax(torch.where(visual & logits.isfinite(), boosted, logits), dim=-1)


@register_intervention
class Temperature(AttentionEdit):
    """AdaptVis-style scaling of visual-key logits: a <- a·scale (scale > 1 sharpens, < 1 flattens)."""

    name = "temperature"

    def __init__(self, adapter: ModelAdapter, scale: float = 1.0, **kw: Any) -> None:
        if not scale > 0:
            raise ValueError(f"temperature scale must be > 0, got {scale}")
        super().__init__(adapter, **kw)
        self.scale = float(scale)

    @property
    def is_noop(self) -> bool:
        return self.scale == 1.0 or not self.layers

    def edit(self, logits, visual, layer, rows):
        return torch.softmax(torch.where(visual & logits.isfinite(), logits * self.scale, logits), dim=-1)


@register_intervention
class Knockout(AttentionEdit):
    """The chosen queries may not attend to visual keys at the chosen layers."""

    name = "knockout"

    def __init__(self, adapter: ModelAdapter, **kw: Any) -> None:
        super().__init__(adapter, **kw)

    @property
    def is_noop(self) -> bool:
        return not self.layers

    def edit(self, logits, visual, layer, rows):
        return torch.softmax(logits.masked_fill(visual, float("-inf")), dim=-1)


@register_intervention
class VAR(AttentionEdit):
    """Visual attention redistribution (Kang et al., "See What You Are Told", ICLR 2025; MICV-yonsei/VisAttnSink).

    Per (example, head, query) whose head is image-centric — it puts at least `summ` of its attention on
    visual keys and sink tokens hold at most `rho` of that visual attention (their HeadFork rule), or the
    head is listed in `image_heads` (e.g. chosen from a store) — a fraction `p` of the attention on sink
    tokens is taken from them and given to the non-sink visual tokens in proportion to their attention.
    Sinks: `set_sinks(mask)` ([batch, seq] bool, e.g. from the store's sink analysis), or detected on the fly
    from the decoder layer's input hidden state: |h / rms(h)| > tau in any of `sink_dims` (their DimProspector).
    Like their code, sink tokens among the text also give up their share. Deliberate difference: their code
    names the *kept* fraction p (sink weights × p, budget (1 - p)); here `p` is the fraction *moved*, as the
    paper's text and the issue phrase it, so their p = 0.6 in code corresponds to p = 0.4 here.
    """

    name = "var"

    def __init__(
        self,
        adapter: ModelAdapter,
        p: float = 0.6,
        rho: float = 0.5,
        summ: float = 0.2,
        *,
        sink_dims: Sequence[int] | None = None,
        tau: float | None = None,
        image_heads: dict[int, Sequence[int]] | None = None,
        **kw: Any,
    ) -> None:
        if not 0 <= p <= 1 or not 0 <= rho <= 1 or not 0 <= summ <= 1:
            raise ValueError(f"VAR needs p, rho, summ in [0, 1], got {p}, {rho}, {summ}")
        super().__init__(adapter, **kw)
        self.p, self.rho, self.summ = float(p), float(rho), float(summ)
        self.sink_dims = None if sink_dims is None else tuple(int(i) for i in sink_dims)
        d = adapter.hidden_size
        self.tau = float(tau) if tau is not None else 20.0 * (d / 4096.0) ** 0.5  # probe.analysis.sinks.default_tau
        self.image_heads = None if image_heads is None else {int(k): tuple(v) for k, v in image_heads.items()}
        self._sinks: torch.Tensor | None = None
        self._detected: dict[int, torch.Tensor] = {}

    @property
    def is_noop(self) -> bool:
        # sink_dims=() (find_sink_dims found no massive dimension): no token can be a sink, nothing is moved
        return self.p == 0 or not self.layers or self.sink_dims == ()

    def set_sinks(self, sinks: torch.Tensor | None) -> None:
        """Sink tokens of the next batch: [batch, seq] bool over all positions (None: detect on the fly)."""
        self._sinks = None if sinks is None else sinks.bool()

    def _install(self) -> Callable[[], None]:
        if self._sinks is None and self.sink_dims is None:
            raise ValueError("VAR needs sink tokens: give sink_dims (detected from a store) or call set_sinks(mask)")
        undo_attn = super()._install()
        handles = []
        if self.sink_dims is not None:
            for i in self.layers:
                handles.append(self.adapter.decoder_layers[i].register_forward_pre_hook(
                    functools.partial(self._detect, i), with_kwargs=True))

        def undo() -> None:
            for h in handles:
                h.remove()
            undo_attn()

        return undo

    def _prepare(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Besides the base's: the sink dimensions and, per layer, the listed image heads, on `device`."""
        fresh = device not in self._on_device
        dev = super()._prepare(device)
        if fresh:
            dev["sink_dims"] = torch.tensor(self.sink_dims or (), dtype=torch.long, device=device)
            for layer in self.layers:
                wanted = [self.heads.index(h) for h in (self.image_heads or {}).get(layer, ()) if h in self.heads]
                dev[f"image_heads.{layer}"] = torch.tensor([i in wanted for i in range(len(self.heads))], device=device)
        return dev

    def _detect(self, layer: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        h = h.detach().float()
        normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).abs()
        self._detected[layer] = normed.index_select(-1, self._prepare(h.device)["sink_dims"]).amax(-1) > self.tau

    def edit(self, logits, visual, layer, rows):
        probs = torch.softmax(logits, dim=-1)
        sinks = self._sinks if self._sinks is not None and self.sink_dims is None else self._detected.get(layer)
        if sinks is None:
            raise RuntimeError(f"VAR: no sink tokens for layer {layer}")
        sink = sinks.to(probs.device)[:, None, None, :]
        vis_mass = (probs * visual).sum(-1, keepdim=True)
        sink_vis = (probs * (visual & sink)).sum(-1, keepdim=True)
        if self.image_heads is not None:
            chosen = self._prepare(probs.device)[f"image_heads.{layer}"]
            select = chosen[None, :, None, None].expand_as(vis_mass)
        else:
            select = (sink_vis <= self.rho * vis_mass) & (vis_mass >= self.summ)
        receivers = visual & ~sink
        recv = probs * receivers
        recv_mass = recv.sum(-1, keepdim=True)
        budget = self.p * (probs * sink).sum(-1, keepdim=True)
        edited = torch.where(sink, probs * (1 - self.p), probs) + budget * recv / recv_mass.clamp_min(1e-30)
        return torch.where(select & (recv_mass > 0), edited, probs)


def image_centric_heads(shares: Any, rho: float = 0.5, summ: float = 0.2, source: str = "last_prompt") -> dict[int, list[int]]:
    """Image-centric heads from a store, for `VAR(image_heads=...)`: layer -> heads whose mean attention on visual
    tokens is at least `summ` and whose sink tokens hold at most `rho` of it (Kang et al.'s HeadFork rule, applied
    to the mean over examples instead of per query). `shares`: `probe.analysis.sink_shares(store)` (sink_share,
    visual_share over example × layer × head × source)."""
    sel = shares.sel(source=source)
    vis = sel["visual_share"].mean("example", skipna=True)
    sink = sel["sink_share"].mean("example", skipna=True)
    chosen = (sink <= rho * vis) & (vis >= summ)
    return {int(layer): [int(h) for h in chosen["head"].values[chosen.sel(layer=layer).values]]
            for layer in chosen["layer"].values}


@register_intervention
class AdaptVis(Temperature):
    """AdaptVis (Chen et al. 2025, shiqichen17/AdaptVis): the visual-key logit scale chosen per example by the
    model's confidence — a plain forward first; where the top next-token probability at the last prompt
    position is below `threshold` the image logits are scaled by `weight1` (< 1, spread attention), otherwise by
    `weight2` (> 1, sharpen). Their options: weight1 0.5 / 0.8, weight2 1.2 / 1.5 / 2.0, threshold 0.3.
    While installed the model's forward runs twice (the plain pass, then the edited one)."""

    name = "adaptvis"

    def __init__(self, adapter: ModelAdapter, weight1: float = 0.5, weight2: float = 1.2, threshold: float = 0.3,
                 **kw: Any) -> None:
        if not (weight1 > 0 and weight2 > 0 and 0 <= threshold <= 1):
            raise ValueError(f"AdaptVis needs weights > 0 and threshold in [0, 1], got {weight1}, {weight2}, {threshold}")
        super().__init__(adapter, scale=1.0, **kw)
        self.weight1, self.weight2, self.threshold = float(weight1), float(weight2), float(threshold)
        self._row_scale: torch.Tensor | None = None

    @property
    def is_noop(self) -> bool:
        return (self.weight1 == 1.0 and self.weight2 == 1.0) or not self.layers

    @property
    def forward_passes(self) -> int:
        return 2

    def edit(self, logits, visual, layer, rows):
        scale = self._row_scale.to(logits.device)[:, None, None, None]
        return torch.softmax(torch.where(visual & logits.isfinite(), logits * scale, logits), dim=-1)

    def _install(self) -> Callable[[], None]:
        detach = super()._install()
        model = self.adapter.model
        forward = model.forward
        had_own = "forward" in vars(model)

        def gated_forward(*args: Any, **kwargs: Any) -> Any:
            if self._segments is None:
                raise RuntimeError("AdaptVis: call set_batch(batch) before the forward pass")
            self.paused = True
            try:
                plain = forward(*args, **kwargs).logits
            finally:
                self.paused = False
            last = last_prompt_index(self._segments.to(plain.device))
            conf = torch.softmax(plain[torch.arange(plain.shape[0], device=plain.device), last].float(), -1).amax(-1)
            self._row_scale = torch.where(conf < self.threshold, self.weight1, self.weight2)
            return forward(*args, **kwargs)

        model.forward = gated_forward

        def undo() -> None:
            if had_own:
                model.forward = forward
            else:
                del model.forward
            detach()

        return undo
