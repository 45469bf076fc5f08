"""Example: where on the image one token looks (before | after), and how much attention each prompt token receives."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from apps.data import filtered_ids, open_dataset
from apps.fonts import font_face
from apps.paint import display_size, paint
from apps.paths import PathRefused, resolve_under_root
from apps.views.context import ViewContext
from probe.vocab import to_str
from probe.segments import Segment

MAX_LISTED = 2000  # more filtered examples than this: type the id instead of picking it from a list
LAYOUT_VARS = ("visual_box", "visual_tile_box", "visual_tile", "image_size")
# transparent at 0 so the image shows through where a token gets no attention
_HEAT = [[0.0, "rgba(0,0,0,0)"], [0.05, "rgba(255,255,0,0.2)"], [0.5, "rgba(255,140,0,0.5)"], [1.0, "rgba(220,0,0,0.75)"]]


@dataclass(frozen=True)
class ExampleRecord:
    """One example's attention row (per head) and its token layout, read from a store."""

    example: str
    segments: np.ndarray  # [position] Segment codes (pads removed)
    tokens: list[str]  # [position]
    pattern: np.ndarray  # [head, position] attention of the chosen query
    query_position: int
    boxes: np.ndarray | None  # [vtoken, 4] original-image pixels
    tile: np.ndarray | None  # [vtoken]
    tile_boxes: np.ndarray | None  # [vtoken, 4]
    image_size: tuple[int, int] | None  # (height, width)
    image: str | None  # the store's `image` coordinate, if recorded

    @property
    def visual_positions(self) -> np.ndarray:
        return np.flatnonzero(self.segments == Segment.VISUAL)

    def row(self, head: int | None) -> np.ndarray:
        """Attention over positions from the chosen head, or the mean over heads when ``head`` is None."""
        return self.pattern.mean(0) if head is None else self.pattern[head]


def shown_token(tok: str) -> str:
    """A token as displayed: newlines as ⏎ (a bare newline would show as an empty cell)."""
    return tok.replace("\n", "⏎")


def _tokens(ds, i: int, n: int) -> list[str]:
    if "token" in ds:
        return [str(t) for t in to_str(ds["token"].isel(example=i).values)[:n]]
    if "input_ids" in ds:
        return [f"#{int(t)}" for t in ds["input_ids"].isel(example=i).values[:n]]
    return [f"p{p}" for p in range(n)]


@st.cache_data(show_spinner=False, max_entries=64)
def example_record(path: Path, example: str, layer: int, query: str) -> ExampleRecord:
    """Read one example's attention row at (layer, query) for every head, and its visual layout (only that example)."""
    ds = open_dataset(path)
    ids = to_str(ds["example"].values)
    hit = np.flatnonzero(ids == example)
    if not len(hit):
        raise KeyError(f"example {example!r} is not in store {path}")
    i = int(hit[0])
    seg = ds["segment_ids"].isel(example=i).values.astype(int)
    keep = np.flatnonzero((seg != Segment.PAD) & (seg >= 0))
    pattern = ds["attn_pattern"].isel(example=i).sel(layer=layer, query=query).transpose("head", "position").values
    qpos = int(ds["query_position"].isel(example=i).sel(query=query).values) if "query_position" in ds else -1
    n_vis = int((seg == Segment.VISUAL).sum())
    lay = {}
    for name in LAYOUT_VARS:
        if name in ds:
            v = ds[name].isel(example=i).values
            lay[name] = v[:n_vis] if name != "image_size" else v
    image = str(ds["image"].values[i]) if "image" in ds.coords else None
    return ExampleRecord(
        example=example, segments=seg[keep], tokens=[_tokens(ds, i, len(seg))[k] for k in keep],
        pattern=pattern[:, keep].astype(np.float64), query_position=int(np.searchsorted(keep, qpos)) if qpos >= 0 else -1,
        boxes=lay.get("visual_box"), tile=lay.get("visual_tile"), tile_boxes=lay.get("visual_tile_box"),
        image_size=tuple(int(x) for x in lay["image_size"]) if "image_size" in lay else None, image=image,
    )


def visual_values(rec: ExampleRecord, head: int | None) -> np.ndarray:
    """Attention of the query on each visual token, in vtoken order (the layout's order)."""
    return rec.row(head)[rec.visual_positions]


def token_table(records: dict[str, ExampleRecord], head: int | None) -> pd.DataFrame:
    """One row per non-visual position (visual tokens summed into one row): attention received per store."""
    first = next(iter(records.values()))
    seg = first.segments
    rows, vis_done = [], False
    for p, (s, tok) in enumerate(zip(seg, first.tokens)):
        if s == Segment.VISUAL:
            if vis_done:
                continue
            vis_done = True
            row = {"position": p, "segment": "visual", "token": f"[image: {len(first.visual_positions)} tokens]"}
            row |= {name: float(r.row(head)[r.visual_positions].sum()) for name, r in records.items()}
        else:
            row = {"position": p, "segment": Segment(int(s)).label, "token": shown_token(tok)}
            row |= {name: float(r.row(head)[p]) if p < r.pattern.shape[1] else np.nan for name, r in records.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def tokens_html(rec: ExampleRecord, head: int | None) -> str:
    """The prompt's tokens as HTML spans shaded by the attention they receive (visual tokens folded into one chip)."""
    row = rec.row(head)
    text_max = max((row[p] for p, s in enumerate(rec.segments) if s != Segment.VISUAL), default=0.0) or 1.0
    out, vis_done = [], False
    for p, (s, tok) in enumerate(zip(rec.segments, rec.tokens)):
        if s == Segment.VISUAL:
            if not vis_done:
                vis_done = True
                tot = row[rec.visual_positions].sum()
                out.append(f"<span style='background:#cde;border-radius:3px;padding:0 4px'>"
                           f"[image ×{len(rec.visual_positions)}: Σ {tot:.3f}]</span>")
            continue
        alpha = min(1.0, max(0.0, row[p] / text_max))
        border = "border:2px solid #000;" if p == rec.query_position else ""
        shown = html.escape(shown_token(tok)) or "·"
        out.append(f"<span title='{row[p]:.4f}' style='background:rgba(230,80,0,{alpha:.2f});{border}"
                   f"border-radius:3px;padding:0 2px;white-space:pre'>{shown}</span>")
    style, family = font_face("".join(rec.tokens) + "⏎")
    return f"{style}<div style='line-height:2;font-family:monospace{',' + family if family else ''}'>" + "".join(out) + "</div>"


def load_image(root: Path, rec: ExampleRecord, manifest: Path | None) -> tuple[np.ndarray | None, str]:
    """The example's image as RGB (resized to its display size) and a one-line note on where it came from."""
    from PIL import Image

    source = None
    if rec.image:
        source = rec.image
    elif manifest is not None:
        from probe.data.manifest import read_manifest

        try:
            found = {ex.id: ex.image for ex in read_manifest(manifest)}
        except (ValueError, OSError) as err:  # a bad manifest costs the picture, not the view
            lines = str(err).strip().splitlines()
            return None, f"no image: manifest {manifest.relative_to(root.resolve())} is unreadable ({lines[0] if lines else type(err).__name__})"
        source = found.get(rec.example)
    if source is None:
        return None, "no image: the store records no `image` path and no manifest lists this example (grey canvas)"
    try:
        path = resolve_under_root(root, source)
    except PathRefused as err:
        return None, str(err)
    if not path.is_file():
        return None, f"image not found: {path}"
    h, w, _ = display_size(rec.image_size or Image.open(path).size[::-1])
    return np.asarray(Image.open(path).convert("RGB").resize((w, h))), f"image: {path.relative_to(root.resolve())}"


def figure(rec: ExampleRecord, values: np.ndarray, picture: np.ndarray | None, zmax: float, tile: int | None,
           title: str) -> go.Figure:
    """The image with each visual token's value painted over its box, tile outlines drawn."""
    size = rec.image_size or (336, 336)
    keep = None if tile is None or rec.tile is None else rec.tile == tile
    heat = paint(values, rec.boxes, size, keep=keep)
    h, w, scale = display_size(size)
    fig = go.Figure()
    # the picture greyed and lightened, so the painted attention is what carries colour
    base = np.full((h, w, 3), 200.0) if picture is None else picture.astype(float).mean(-1, keepdims=True).repeat(3, -1)
    fig.add_trace(go.Image(z=(0.45 * base + 0.55 * 255).astype(np.uint8), hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=heat, colorscale=_HEAT, zmin=0, zmax=zmax or 1.0, showscale=True,
                             colorbar=dict(title="attention", thickness=10),
                             hovertemplate="x %{x}, y %{y}: %{z:.4f}<extra></extra>"))
    if rec.tile_boxes is not None and rec.tile is not None:
        for t in np.unique(rec.tile):
            if tile is not None and t != tile:
                continue
            x0, y0, x1, y1 = rec.tile_boxes[np.flatnonzero(rec.tile == t)[0]] * scale
            fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color="cyan", width=1, dash="dot"))
    fig.update_layout(title=title, height=h + 80, width=w + 140, margin=dict(t=40, b=10, l=10, r=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False, autorange="reversed", scaleanchor="x"))
    return fig


def _layers_queries(path: Path) -> tuple[list[int], list[str], list[int]]:
    ds = open_dataset(path)
    return ([int(x) for x in ds["layer"].values], [str(q) for q in ds["query"].values], [int(h) for h in ds["head"].values])


def render(ctx: ViewContext, manifest: Path | None = None) -> None:
    """Draw the example view."""
    st.header("Example: where a token looks on the image")
    ds = open_dataset(ctx.before)
    missing = [v for v in ("attn_pattern", "segment_ids", "visual_box") if v not in ds]
    if missing:
        st.warning(f"the store lacks {missing}: capture with CaptureSpec(attn_pattern=True) on a version that records "
                   "the visual token layout")
        return
    ids = filtered_ids(ds, ctx.filter_dict)
    if ctx.after is not None:
        ids = ids[np.isin(ids, filtered_ids(open_dataset(ctx.after), ctx.filter_dict))]
    if not len(ids):
        st.info("no example passes the filters (in both stores)")
        return
    layers, queries, heads = _layers_queries(ctx.before)
    c1, c2, c3, c4 = st.columns(4)
    if len(ids) <= MAX_LISTED:
        example = c1.selectbox("example", list(ids), key="ex_example")
    else:  # a long list would ship every id to the browser
        example = c1.text_input(f"example id ({len(ids)} pass the filters)", str(ids[0]), key="ex_example_id").strip()
        if example not in set(ids.tolist()):
            st.error(f"example {example!r} is not among the filtered examples of both stores")
            return
    query = c2.selectbox("query token", queries, key="ex_query",
                         help="last_prompt: the last prompt token, where the answer is predicted; answer_i: the i-th answer token")
    layer = c3.selectbox("layer", layers, key="ex_layer")
    head_choice = c4.selectbox("head", ["mean"] + heads, key="ex_head")
    head = None if head_choice == "mean" else heads.index(int(head_choice))
    records = {name: example_record(p, example, layer, query) for name, p in ctx.stores.items()}
    first = records["before"]
    tiles = [] if first.tile is None else sorted({int(t) for t in first.tile})
    tile_choice = st.radio("tiles", ["all (overlaps add up)"] + [f"tile {t}" for t in tiles], horizontal=True, key="ex_tile") \
        if len(tiles) > 1 else "all"
    tile = None if tile_choice.startswith("all") else int(tile_choice.split()[1])
    picture, note = load_image(ctx.root, first, manifest)
    vals = {name: visual_values(r, head) for name, r in records.items()}
    zmax = max((paint(v, r.boxes, r.image_size or (336, 336),
                      keep=None if tile is None else r.tile == tile).max() for (name, r), v in zip(records.items(), vals.values())),
               default=1.0)
    head_txt = "mean over heads" if head is None else f"head {heads[head]}"
    st.caption(f"Colour = attention from **{query}** (layer {layer}, {head_txt}) summed over the visual tokens whose "
               f"image region covers the pixel; same colour scale in both panels; dotted boxes = tiles. {note}")
    st.caption("Below each image: the prompt's tokens shaded by the attention they receive from the query token "
               "(boxed); the image's tokens are folded into one chip with their total.")
    cols = st.columns(len(records))
    for col, (name, rec) in zip(cols, records.items()):
        with col:
            st.metric(f"{name}: attention on the image", f"{vals[name].sum():.3f}")
            st.plotly_chart(figure(rec, vals[name], picture, zmax, tile, name), key=f"ex_fig_{name}")
            st.markdown(tokens_html(rec, head), unsafe_allow_html=True)
    if "token" not in open_dataset(ctx.before):
        st.caption("tokens shown as ids (#id): the store records no decoded `token` strings")
    with st.expander("attention received per token (table)"):
        st.dataframe(token_table(records, head), hide_index=True, key="ex_tokens")
