"""Synthetic TraceStores in the schema of docs/store-schema.md, with planted effects of known size.

Layout per example (P=20 positions): 0-1 text, 2-9 visual (position 2 is the planted sink),
10-15 text, 16-17 answer, 18-19 past seq_len. Planted effects, before -> after:
- attn_share visual: 0.5 at layers 2-3 -> 0.3 (a 40% fall); 0.4 at layers 0-1 unchanged.
- attn_pattern rows: 0.30 on the sink position, 0.20 on the other visual positions (both stores).
- hook_resid_post_tokens: feature SINK_DIM is massive (value 60) at the sink position.
- hook_rot_k: visual keys shifted by KEY_SHIFT[layer] from N(0, I) text keys; after doubles it.
- label_colour: encoded in the pooled visual residual and last_prompt residual in both stores;
  after removes it from last_prompt (information unused there) but keeps it at visual.
- projector_out: after = before @ rotation-free small perturbation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probe.segments import SEGMENT_NAMES, Segment

P, V, F, D, H, KV = 20, 8, 16, 8, 4, 2
LAYERS = np.array([0, 1, 2, 3])
SINK_POS, SINK_DIM = 2, 5
KEY_SHIFT = np.array([0.0, 0.0, 3.0, 3.0])
COLOURS = np.array(["red", "green", "blue"])
QUERIES = ["last_prompt", "answer_0", "answer_1"]


def segment_row() -> np.ndarray:
    """Segment codes of one example."""
    s = np.full(P, -1, dtype=np.int8)
    s[0:2] = Segment.TEXT
    s[2:10] = Segment.VISUAL
    s[10:16] = Segment.TEXT
    s[16:18] = Segment.ANSWER
    return s


def make_dataset(n: int = 40, after: bool = False, seed: int = 0, n_eval: bool = True) -> xr.Dataset:
    """An in-memory Dataset of n examples following the store schema with the planted effects."""
    rng = np.random.default_rng(seed + (1 if after else 0))
    base_rng = np.random.default_rng(seed)  # shared between before/after: same inputs
    seg = np.tile(segment_row(), (n, 1))
    n_l, n_seg = len(LAYERS), len(SEGMENT_NAMES)
    vis_share = np.where(LAYERS >= 2, 0.3 if after else 0.5, 0.4)
    share = np.zeros((n, n_l, H, 3, n_seg), np.float32)
    noise = rng.uniform(-0.02, 0.02, (n, n_l, H, 3))
    v = vis_share[None, :, None, None] + noise
    share[..., Segment.VISUAL] = v
    share[..., Segment.TEXT] = 1.0 - v - 0.1
    share[..., Segment.ANSWER] = 0.1

    pat = np.full((n, n_l, H, len(QUERIES), P), np.nan, np.float32)
    row = np.zeros(18)
    row[SINK_POS] = 0.30
    row[3:10] = 0.20 / 7
    text_pos = [0, 1] + list(range(10, 16))
    row[text_pos] = 0.50 / len(text_pos)
    pat[..., :18] = row

    tokens = rng.normal(0, 1, (n, n_l, P, F)).astype(np.float32)
    tokens[:, :, SINK_POS, SINK_DIM] = 60.0
    tokens[:, :, 18:] = np.nan

    keys = rng.normal(0, 1, (n, n_l, KV, P, D)).astype(np.float32)
    shift = KEY_SHIFT * (2.0 if after else 1.0)
    keys[:, :, :, 2:10, :] += shift[None, :, None, None, None].astype(np.float32)
    keys[:, :, :, 18:] = np.nan

    colour_idx = np.arange(n) % 3
    code = np.eye(3)[colour_idx] * 8.0  # [n, 3]
    pooled = np.full((n, n_l, n_seg, F), np.nan, np.float32)
    for s in (Segment.TEXT, Segment.VISUAL, Segment.ANSWER):
        pooled[:, :, s] = rng.normal(0, 1, (n, n_l, F))
    pooled[:, :, Segment.VISUAL, :3] += code[:, None, :]
    resid = rng.normal(0, 1, (n, n_l, len(QUERIES), F)).astype(np.float32)
    if not after:
        resid[:, :, 0, :3] += code[:, None, :]

    proj = base_rng.normal(0, 1, (n, V, F)).astype(np.float32)
    if after:
        proj = proj + rng.normal(0, 0.5, proj.shape).astype(np.float32)

    ex = [f"ex{i:05d}" for i in range(n)]
    ds = xr.Dataset(
        {
            "seq_len": ("example", np.full(n, 18, np.int32)),
            "segment_ids": (("example", "position"), seg),
            "query_position": (("example", "query"), np.tile(np.array([15, 16, 17], np.int32), (n, 1))),
            "attn_share": (("example", "layer", "head", "source", "segment"), share),
            "attn_pattern": (("example", "layer", "head", "query", "position"), pat),
            "hook_rot_k": (("example", "layer", "kv_head", "position", "d_head"), keys),
            "hook_resid_post": (("example", "layer", "query", "feature"), resid),
            "hook_resid_post_pooled": (("example", "layer", "segment", "feature"), pooled),
            "hook_resid_post_tokens": (("example", "layer", "position", "feature"), tokens),
            "projector_out": (("example", "vtoken", "feature"), proj),
            "n_vtoken": ("example", np.full(n, V, np.int32)),
        },
        coords={
            "example": ex,
            "layer": LAYERS,
            "head": np.arange(H),
            "kv_head": np.arange(KV),
            "source": ["last_prompt", "answer", "text"],
            "segment": list(SEGMENT_NAMES),
            "query": QUERIES,
            "lang": ("example", np.where(np.arange(n) % 2 == 0, "en", "ko")),
            "condition": ("example", np.full(n, "real")),
            "question_type": ("example", np.full(n, "colour")),
            "image_dependent": ("example", np.ones(n, bool)),
            "label_colour": ("example", COLOURS[colour_idx]),
        },
        attrs={"model_id": "synthetic", "schema_version": "1", "adapter": "synthetic"},
    )
    return ds


def make_eval(ds: xr.Dataset, after: bool) -> xr.Dataset:
    """A behavioural eval dataset: real images answered right, blank ones at chance; after is blind."""
    n = ds.sizes["example"]
    real = np.ones(n, bool) if not after else (np.arange(n) % 3 == 0)
    blank = np.arange(n) % 3 == 0
    correct = np.stack([real, blank], axis=1)
    return xr.Dataset(
        {"correct": (("example", "condition"), correct)},
        coords={"example": ds["example"].values, "condition": ["real", "blank"], "lang": ("example", ds["lang"].values)},
    )


def make_vocab(ds: xr.Dataset) -> xr.Dataset:
    """A 6-word vocabulary (Latin, Hangul, other) with random embeddings in the projector's feature space."""
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(6, ds.sizes["feature"]))
    return xr.Dataset({"embedding": (("vocab", "feature"), emb), "token": ("vocab", ["cat", "dog", "하늘", "바다", "7", "."])})


def write_store(path: Path, ds: xr.Dataset, chunk: int = 10, eval_ds: xr.Dataset | None = None,
                vocab: xr.Dataset | None = None) -> Path:
    """Write ds to a zarr v3 store chunked along example (plus optional eval and vocab groups)."""
    enc = {}
    for name, var in ds.data_vars.items():
        enc[name] = {"chunks": tuple(chunk if d == "example" else s for d, s in zip(var.dims, var.shape))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixed-width unicode coords have no zarr v3 spec yet
        ds.to_zarr(path, mode="w", encoding=enc, consolidated=False, zarr_format=3)
        if eval_ds is not None:
            eval_ds.to_zarr(path, group="eval", mode="w", consolidated=False, zarr_format=3)
        if vocab is not None:
            vocab.to_zarr(path, group="vocab", mode="w", consolidated=False, zarr_format=3)
    return path


def open_store(path: Path) -> xr.Dataset:
    """Reopen lazily (dask-backed)."""
    return xr.open_zarr(path, consolidated=False)


@pytest.fixture(scope="session")
def store_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Paths of a before / after store pair (40 examples, chunks of 10) with eval groups."""
    root = tmp_path_factory.mktemp("stores")
    b, a = make_dataset(after=False), make_dataset(after=True)
    pb = write_store(root / "before.zarr", b, eval_ds=make_eval(b, False), vocab=make_vocab(b))
    pa = write_store(root / "after.zarr", a, eval_ds=make_eval(a, True), vocab=make_vocab(a))
    return pb, pa


@pytest.fixture(scope="session")
def lazy_pair(store_pair: tuple[Path, Path]) -> tuple[xr.Dataset, xr.Dataset]:
    """The store pair opened lazily."""
    return open_store(store_pair[0]), open_store(store_pair[1])


def write_trace_store(path: Path, ds: xr.Dataset, batch: int = 16) -> Path:
    """Write ds through the project's TraceStoreWriter (the real store format)."""
    from probe.store import TraceStoreWriter, VariableSpec

    variables = {
        name: VariableSpec(var.dims, str(var.dtype), np.nan if var.dtype.kind == "f" else -1)
        for name, var in ds.data_vars.items()
    }
    labelled = {d: ds[d].values.tolist() for d in ds.dims if d != "example" and d in ds.coords}
    sizes = {d: n for d, n in ds.sizes.items() if d != "example" and d not in ds.coords}
    ex_coords = {"lang": "str", "condition": "str", "question_type": "str", "image_dependent": "bool", "label_colour": "str"}
    if "group" in ds.coords:
        ex_coords["group"] = "str"
    w = TraceStoreWriter(path, variables=variables, coords=labelled, sizes=sizes, example_coords=ex_coords,
                         attrs={"model_id": ds.attrs.get("model_id", "synthetic")}, examples_per_chunk=batch)
    for s in range(0, ds.sizes["example"], batch):
        sub = ds.isel(example=slice(s, s + batch))
        w.append(sub["example"].values.tolist(), {c: sub[c].values.tolist() for c in ex_coords},
                 {name: sub[name].values for name in ds.data_vars})
    w.close()
    return path
