"""Synthetic TraceStores with hand-built visual token layouts (LLaVA anyres, InternVL tiles, Qwen2-VL merged patches)."""

from __future__ import annotations

import base64

from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image

from probe.segments import SEGMENT_NAMES, Segment
from probe.store import TraceStore, TraceStoreWriter, VariableSpec

LAYERS, HEADS, KV_HEADS, D_HEAD, FEATURE = (0, 1, 2), 4, 2, 4, 6
SOURCES = ("last_prompt", "answer", "text")
QUERIES = ("last_prompt", "answer_0")
PREFIX, SUFFIX, ANSWER = 3, 4, 1  # text tokens before the image, after it, answer tokens


def grid_boxes(x0: float, y0: float, x1: float, y1: float, rows: int, cols: int) -> np.ndarray:
    """Row-major token boxes of a rows × cols grid covering (x0, y0, x1, y1)."""
    xs, ys = np.linspace(x0, x1, cols + 1), np.linspace(y0, y1, rows + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(rows) for c in range(cols)], np.float32)


def layout(family: str, grid: int = 2) -> dict[str, np.ndarray]:
    """Known layout per family: tile, row, col, box, tile_box per visual token, image_size (h, w); grid × grid tokens per tile."""
    tiles: list[tuple[tuple[float, float, float, float], int, int]]
    if family == "llava_anyres":  # base (thumbnail) tile first, then two high-res tiles left | right; 336 x 672
        size = (336, 672)
        tiles = [((0, 0, 672, 336), grid, grid), ((0, 0, 336, 336), grid, grid), ((336, 0, 672, 336), grid, grid)]
    elif family == "internvl":  # two tiles top | bottom, then the thumbnail last; 896 x 448
        size = (896, 448)
        tiles = [((0, 0, 448, 448), grid, grid), ((0, 448, 448, 896), grid, grid), ((0, 0, 448, 896), grid, grid)]
    elif family == "qwen2_vl":  # one tile of merged 28 px patches, 2 x 3 tokens over 56 x 84
        size = (56, 84)
        tiles = [((0, 0, 84, 56), 2, 3)]
    else:
        raise ValueError(family)
    out = {k: [] for k in ("tile", "row", "col", "box", "tile_box")}
    for t, (tb, rows, cols) in enumerate(tiles):
        out["box"].append(grid_boxes(*tb, rows, cols))
        out["tile_box"].append(np.tile(np.array(tb, np.float32), (rows * cols, 1)))
        out["tile"].append(np.full(rows * cols, t, np.int32))
        out["row"].append(np.repeat(np.arange(rows, dtype=np.int32), cols))
        out["col"].append(np.tile(np.arange(cols, dtype=np.int32), rows))
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["image_size"] = np.array(size, np.int32)
    return res


def write_store(path: Path, n: int, family: str = "llava_anyres", seed: int = 0, visual_scale: float = 1.0,
                keys: bool = True, pattern: bool = True, examples_per_chunk: int = 64, eval_group: bool = True,
                image_coord: str | None = None, extra_position: int = 0, grid: int = 2, group_size: int = 0,
                prompt: tuple[str, ...] | None = None, id_prefix: str = "ex", layers: tuple[int, ...] = LAYERS) -> Path:
    """A store of ``n`` examples (ids ex0..); langs en/ko alternate; the visual share is scaled by ``visual_scale``.
    ``group_size`` > 0: a `group` coordinate (the image) shared by that many consecutive examples; ``prompt``: the
    token strings around the image (default PROMPT); ``id_prefix``: ids {id_prefix}0..; ``layers``: the decoder layers."""
    rng = np.random.default_rng(seed)
    lay = layout(family, grid)
    n_vis = len(lay["tile"])
    seq = PREFIX + n_vis + SUFFIX + ANSWER
    n_pos = seq + extra_position
    seg = np.full(n_pos, Segment.PAD, np.int8)
    seg[:PREFIX] = Segment.TEXT
    seg[PREFIX:PREFIX + n_vis] = Segment.VISUAL
    seg[PREFIX + n_vis:PREFIX + n_vis + SUFFIX] = Segment.TEXT
    seg[seq - ANSWER:seq] = Segment.ANSWER
    variables = {
        "segment_ids": VariableSpec(("example", "position"), "int8", -1),
        "query_position": VariableSpec(("example", "query"), "int32", -1),
        "n_vtoken": VariableSpec(("example",), "int32", -1),
        "input_ids": VariableSpec(("example", "position"), "int64", -1),
        "token": VariableSpec(("example", "position"), "str", ""),
        "attn_share": VariableSpec(("example", "layer", "head", "source", "segment"), "float32", np.nan),
        "visual_tile": VariableSpec(("example", "vtoken"), "int32", -1),
        "visual_row": VariableSpec(("example", "vtoken"), "int32", -1),
        "visual_col": VariableSpec(("example", "vtoken"), "int32", -1),
        "visual_box": VariableSpec(("example", "vtoken", "corner"), "float32", np.nan),
        "visual_tile_box": VariableSpec(("example", "vtoken", "corner"), "float32", np.nan),
        "image_size": VariableSpec(("example", "hw"), "int32", -1),
        "hook_resid_post": VariableSpec(("example", "layer", "query", "feature"), "float32", np.nan),
    }
    if pattern:
        variables["attn_pattern"] = VariableSpec(("example", "layer", "head", "query", "position"), "float32", np.nan)
    if keys:
        variables["hook_rot_k"] = VariableSpec(("example", "layer", "kv_head", "position", "d_head"), "float32", np.nan)
    coords = {"layer": list(layers), "head": list(range(HEADS)), "kv_head": list(range(KV_HEADS)), "source": list(SOURCES),
              "segment": list(SEGMENT_NAMES), "query": list(QUERIES), "position": list(range(n_pos))}
    ecoords = {"lang": "str", "condition": "str", "question_type": "str", "image_dependent": "bool", "label_colour": "str"}
    if image_coord is not None:
        ecoords["image"] = "str"
    if group_size:
        ecoords["group"] = "str"
    w = TraceStoreWriter(path, variables=variables, coords=coords,
                         sizes={"vtoken": n_vis, "corner": 4, "hw": 2, "d_head": D_HEAD, "feature": FEATURE},
                         example_coords=ecoords, attrs={"model_id": f"synthetic-{family}-{seed}"},
                         examples_per_chunk=examples_per_chunk)
    colours = np.array(["red", "green", "blue"])
    block = 512
    for start in range(0, n, block):
        k = min(block, n - start)
        ids = [f"{id_prefix}{i}" for i in range(start, start + k)]
        idx = np.arange(start, start + k)
        lang = np.where(idx % 2 == 0, "en", "ko")
        colour = colours[(idx // 2) % 3]
        share = rng.dirichlet(np.ones(len(SEGMENT_NAMES)), size=(k, len(layers), HEADS, len(SOURCES))).astype(np.float32)
        vi = SEGMENT_NAMES.index("visual")
        share[..., vi] *= visual_scale
        pat = attention_rows(rng, k, seg, lay, visual_scale, len(layers))
        kk = np.full((k, len(layers), KV_HEADS, n_pos, D_HEAD), np.nan, np.float32)  # pads stay NaN, as capture stores them
        kk[..., seg != Segment.PAD, :] = rng.normal(size=(k, len(layers), KV_HEADS, int((seg != Segment.PAD).sum()), D_HEAD))
        kk[..., seg == Segment.VISUAL, :] += 3.0 * visual_scale
        data = {
            "segment_ids": np.tile(seg, (k, 1)),
            "query_position": np.tile(np.array([seq - ANSWER - 1, seq - ANSWER], np.int32), (k, 1)),
            "n_vtoken": np.full(k, n_vis, np.int32),
            "input_ids": np.tile(np.where(seg == Segment.PAD, -1, 100 + np.arange(n_pos)), (k, 1)),
            "token": np.tile(np.array(tokens(seg, prompt or PROMPT), dtype=object), (k, 1)),
            "attn_share": share,
            "visual_tile": np.tile(lay["tile"], (k, 1)), "visual_row": np.tile(lay["row"], (k, 1)),
            "visual_col": np.tile(lay["col"], (k, 1)),
            "visual_box": np.tile(lay["box"], (k, 1, 1)), "visual_tile_box": np.tile(lay["tile_box"], (k, 1, 1)),
            "image_size": np.tile(lay["image_size"], (k, 1)),
            "hook_resid_post": (rng.normal(size=(k, len(layers), len(QUERIES), FEATURE))
                                + (np.searchsorted(colours, colour)[:, None, None, None] * visual_scale)).astype(np.float32),
        }
        if pattern:
            data["attn_pattern"] = pat
        if keys:
            data["hook_rot_k"] = kk
        ex_coords = {"lang": list(lang), "condition": ["real"] * k, "question_type": list(np.where(idx % 3 == 0, "count", "colour")),
                     "image_dependent": [True] * k, "label_colour": list(colour)}
        if image_coord is not None:
            ex_coords["image"] = [image_coord] * k
        if group_size:
            ex_coords["group"] = [f"img{i // group_size}" for i in idx]
        w.append(ids, ex_coords, data)
    w.close()
    if eval_group:
        write_eval(path, n, seed, p_dependent=0.9 * min(visual_scale, 1.0))
    return path


PROMPT = ("USER", ":", " What", " colour", " is", " the", " disc", "?", " ASSIST", "ANT", ":", " red", "\n")


def tokens(seg: np.ndarray, prompt: tuple[str, ...] = PROMPT) -> list[str]:
    """Token strings per position: prompt words around the image, `<image>` on visual positions, "" on pads."""
    words = iter(prompt * 4)
    return ["<image>" if s == Segment.VISUAL else "" if s == Segment.PAD else next(words) for s in seg]


def attention_rows(rng: np.random.Generator, k: int, seg: np.ndarray, lay: dict, visual_scale: float,
                   n_layers: int = len(LAYERS)) -> np.ndarray:
    """Attention rows [k, layer, head, query, position]: a share 0.6 × visual_scale on the visual tokens, peaked on
    the image's top-left quadrant (sharper when visual_scale is high), the rest spread over the text."""
    shape = (k, n_layers, HEADS, len(QUERIES))
    h, w = lay["image_size"]
    cx, cy = (lay["box"][:, 0] + lay["box"][:, 2]) / 2 / w, (lay["box"][:, 1] + lay["box"][:, 3]) / 2 / h
    focus = np.exp(-((cx - 0.25) ** 2 + (cy - 0.25) ** 2) / (0.05 / max(visual_scale, 0.05)))
    vis = focus * (0.5 + rng.random(shape + (len(focus),)))
    txt = rng.random(shape + (int((seg != Segment.PAD).sum() - len(focus)),))
    share = 0.6 * visual_scale
    out = np.zeros(shape + (len(seg),), np.float32)
    out[..., seg == Segment.VISUAL] = share * vis / vis.sum(-1, keepdims=True)
    out[..., (seg != Segment.VISUAL) & (seg != Segment.PAD)] = (1 - share) * txt / txt.sum(-1, keepdims=True)
    return out


def write_eval(path: Path, n: int, seed: int, p_dependent: float) -> xr.Dataset:
    """A minimal `eval` group (the per-example variables the overview reads)."""
    rng = np.random.default_rng(seed + 1)
    idx = np.arange(n)
    ds = xr.Dataset(
        {"visually_dependent": ("example", rng.random(n) < p_dependent),
         "has_partner": ("example", idx % 10 != 9),
         "visual_dependence": ("lang", [np.nan, np.nan])},  # aggregates exist in real eval groups; not read here
        coords={"example": np.array([f"ex{i}" for i in idx]), "lang": ["en", "ko"],
                "example_lang": ("example", np.where(idx % 2 == 0, "en", "ko")),
                "example_question_type": ("example", np.where(idx % 3 == 0, "count", "colour")),
                "example_image_dependent": ("example", np.ones(n, bool))},
    )
    TraceStore.open(path).write_group("eval", ds)
    return ds


def write_image(path: Path, size: tuple[int, int]) -> Path:
    """An image (h, w) = ``size``: light background, a red disc centred in the top-left quadrant, a blue square bottom-right."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.full((h, w, 3), 235, np.uint8)
    arr[(xx - w / 4) ** 2 + (yy - h / 4) ** 2 < (min(h, w) / 6) ** 2] = (210, 30, 30)
    arr[(xx > 0.65 * w) & (xx < 0.85 * w) & (yy > 0.6 * h) & (yy < 0.9 * h)] = (30, 60, 200)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def plotly_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or {"dtype", "bdata" (base64), "shape"} as plotly 6 writes numpy arrays."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(x) for x in shape.split(",")] if isinstance(shape, str) else shape) if shape else flat
    return np.asarray(value, dtype=float)
