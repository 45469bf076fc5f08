"""The report's example pictures: the last prompt token's attention painted on the image, before and after.

Examples are chosen by a fixed rule that does not look at any result: the first `per_lang` image-dependent
examples of each language, in the before store's order, that both stores hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from probe.analysis._io import as_dataset
from probe.vocab import to_str
from probe.report.paint import display_size, paint
from probe.segments import Segment

RULE = ("the first {n} image-dependent examples of each language in the before store's order that both stores hold "
        "(chosen without looking at any result); colour: the last prompt token's attention on each visual token's box, "
        "averaged over layers and heads, on one scale per example (the larger maximum of the two)")
_HEAT = [[0.0, "rgba(255,255,255,0)"], [0.25, "rgba(255,200,0,0.55)"], [1.0, "rgba(200,0,0,0.9)"]]
MAX_SIDE = 96  # pixels of the painted raster's longer side (a visual token covers several even on a 24×24 grid)
_NEEDS = ("attn_pattern", "segment_ids", "visual_box", "image_size")


def chosen_examples(before: xr.Dataset, after: xr.Dataset, per_lang: int = 2) -> list[str]:
    """The examples the report paints (see RULE): ids in the before store's order."""
    ids = to_str(before["example"].values)
    have = set(to_str(after["example"].values).tolist())
    langs = to_str(before["lang"].values) if "lang" in before.coords else np.full(len(ids), "")
    dep = (before["image_dependent"].values.astype(bool) if "image_dependent" in before.coords
           else np.ones(len(ids), bool))
    out, count = [], {}
    for i, e in enumerate(ids):
        if dep[i] and e in have and count.get(langs[i], 0) < per_lang:
            out.append(e)
            count[langs[i]] = count.get(langs[i], 0) + 1
    return out


def last_prompt_attention(ds: xr.Dataset, example: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(attention of the last prompt token on each visual token [n_vis], their boxes [n_vis, 4], image (h, w))."""
    i = int(np.flatnonzero(to_str(ds["example"].values) == example)[0])
    seg = ds["segment_ids"].isel(example=i).values.astype(int)
    row = ds["attn_pattern"].isel(example=i).sel(query="last_prompt").mean(("layer", "head")).values
    vis = np.flatnonzero(seg == int(Segment.VISUAL))
    boxes = ds["visual_box"].isel(example=i).values[: len(vis)]
    size = tuple(int(x) for x in ds["image_size"].isel(example=i).values)
    return np.asarray(row, dtype=np.float64)[vis], boxes, size


def _picture(path: str | Path | None, size: tuple[int, int]) -> tuple[str, str]:
    """The image greyed and lightened at display size as a PNG data URI (a grey canvas when it cannot be read), and its
    caption. A PNG keeps the page small: a raw pixel array would be written into the page as JSON numbers."""
    import base64
    import io

    from PIL import Image

    h, w, _ = display_size(size, MAX_SIDE)
    grey, caption = np.full((h, w), 200.0), "image not available: grey canvas"
    if path is not None:
        try:
            with Image.open(path) as im:
                grey = 0.45 * np.asarray(im.convert("L").resize((w, h)), dtype=np.float64) + 0.55 * 255
            caption = Path(path).name
        except OSError:
            pass
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint8), "L").convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), caption


def image_paths(ds: xr.Dataset, manifests: Sequence[str | Path] = ()) -> dict[str, str]:
    """Example id -> image path: the store's `image` coordinate, else the manifests' entries."""
    if "image" in ds.coords:
        return dict(zip(to_str(ds["example"].values), to_str(ds["image"].values)))
    from probe.data.manifest import read_manifest

    out = {}
    for m in manifests:
        out |= {ex.id: str(ex.image) for ex in read_manifest(m) if isinstance(ex.image, (str, Path))}
    return out


def example_figures(before: Any, after: Any, manifests: Sequence[str | Path] = (), per_lang: int = 2) -> list[Any]:
    """One figure per chosen example: before | after, the attention painted on the image; or a note why none."""
    b, a = as_dataset(before), as_dataset(after)
    missing = [v for v in _NEEDS if v not in b or v not in a]
    if missing or "last_prompt" not in to_str(b["query"].values).tolist():
        return [f"<p class='skip'>no example pictures: the stores lack {missing or ['a last_prompt query']}</p>"]
    chosen = chosen_examples(b, a, per_lang)
    paths = image_paths(b, manifests)
    out: list[Any] = [f"<p>Examples: {RULE.format(n=per_lang)}.</p>"]
    for ex in chosen:
        (vb, boxes, size), (va, _, _) = last_prompt_attention(b, ex), last_prompt_attention(a, ex)
        zmax = float(np.nanmax([vb.max(initial=0), va.max(initial=0)])) or 1.0
        picture, caption = _picture(paths.get(ex), size)
        h, w, _ = display_size(size, max_side=256)
        fig = make_subplots(1, 2, subplot_titles=(f"before: {vb.sum() * 100:.1f}% on the image",
                                                  f"after: {va.sum() * 100:.1f}% on the image"), horizontal_spacing=0.04)
        for col, v in ((1, vb), (2, va)):
            fig.add_trace(go.Image(source=picture, hoverinfo="skip"), 1, col)
            fig.add_trace(go.Heatmap(z=paint(v, boxes, size, max_side=MAX_SIDE).astype(np.float32), coloraxis="coloraxis",
                                     hovertemplate="%{z:.4f}<extra></extra>"), 1, col)
        fig.update_layout(title=f"{ex} ({caption})", coloraxis=dict(colorscale=_HEAT, cmin=0, cmax=zmax,
                                                                     colorbar=dict(title="attention", thickness=10)),
                          height=h + 110, width=2 * w + 180, margin=dict(t=70, b=10, l=10, r=10))
        fig.update_xaxes(visible=False)
        fig.update_layout(yaxis=dict(visible=False, autorange="reversed", scaleanchor="x"),
                          yaxis2=dict(visible=False, autorange="reversed", scaleanchor="x2"))
        out.append(fig)
    return out
