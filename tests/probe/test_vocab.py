"""probe.vocab: the one definition of the independent unit, the query sources / position sets and the sites."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from probe.data.example import Example
from probe.segments import Segment
from probe.vocab import (
    POSITION_SETS,
    SITE_ALIASES,
    SITES,
    canonical_site,
    example_coords,
    position_mask,
    query_mask,
    tl_hook,
    unit_of,
)

T, V, A, P = int(Segment.TEXT), int(Segment.VISUAL), int(Segment.ANSWER), int(Segment.PAD)


def test_unit_rule():
    img = Image.new("RGB", (2, 2))
    assert unit_of(Example("a", "x/1.png", "p")) == "x/1.png"
    assert unit_of(Example("a", Path("x/1.png"), "p", group="g")) == "g"
    assert unit_of(Example("a", "x/1.png", "p", labels={"group": 7})) == "7"
    assert unit_of(Example("a", img, "p")) == "a"  # an open image without a group is its own unit
    coords = example_coords([Example("a", "1.png", "p", image_dependent=None), Example("b", "1.png", "q", lang="ko",
                                                                                           image_dependent=False)])
    assert coords["group"] == ["1.png", "1.png"] and coords["image_dependent"] == [True, False]
    assert set(example_coords([], prefix="example_")) == {f"example_{k}" for k in coords}


def test_position_sets_by_hand():
    seg = torch.tensor([[T, V, V, T, T, A, A, P], [T, V, T, A, P, P, P, P]])
    want = {
        "last_prompt": [[0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0]],
        "answer": [[0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0]],
        "text": [[1, 0, 0, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0, 0]],  # prompt text only: never the answer
        "visual": [[0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]],
    }
    assert set(want) == set(POSITION_SETS)
    for name, mask in want.items():
        assert position_mask(seg, name).tolist() == [[bool(x) for x in row] for row in mask], name
    assert query_mask(seg, ["answer", "last_prompt"]).sum().item() == 5
    with pytest.raises(ValueError, match="unknown query source 'visual'"):
        query_mask(seg, ["visual"])


def test_sites_are_one_table(tiny_adapter):
    from probe.capture.recordables import RECORDABLES
    from probe.interop.tl import _TL_LAYOUT  # private: the hooks the interop can rebuild

    for r in RECORDABLES.values():
        assert r.site is None or r.site in SITES, r.name
        if r.tl_hook:
            assert r.tl_hook in {tl_hook(s) for s in SITES}, r.name
    assert {h.rsplit(".", 1)[-1] for h in (tl_hook(s) for s in SITES) if h} >= set(_TL_LAYOUT)
    assert tl_hook("lm.layer.{i}.attn.k", 3) == "blocks.3.attn.hook_rot_k" and tl_hook("vision.out") is None
    for alias, site in SITE_ALIASES.items():
        assert canonical_site(alias) == site in SITES
    with pytest.raises(KeyError, match="unknown site 'resid_post'"):
        canonical_site("resid_post")
    adapter = tiny_adapter("llava")
    assert set(adapter.sites) <= set(SITES)


def test_results_are_typed_and_versioned(tmp_path):
    """An evaluation saved and read back through probe; another kind or a newer schema is refused in one line."""
    import numpy as np
    import xarray as xr

    from probe.eval import load_dependence, save_dependence
    from probe.results import SCHEMAS, ResultError, check, stamp

    ev = xr.Dataset({v: ("example", np.zeros(2)) for v in ("correct", "visually_dependent", "accuracy",
                                                           "visual_dependence")})
    save_dependence(ev, tmp_path / "e.zarr")
    back = load_dependence(tmp_path / "e.zarr")
    assert back.attrs["visblind_result"] == "evaluation" and back.attrs["visblind_result_schema"] == SCHEMAS["evaluation"]
    with pytest.raises(ResultError, match="holds an evaluation result, not a run result"):
        check(back, "run", "e.zarr")
    newer = back.assign_attrs(visblind_result_schema=SCHEMAS["evaluation"] + 1)
    newer.to_zarr(tmp_path / "n.zarr", consolidated=False)  # as a later visblind would write it
    with pytest.raises(ResultError, match="evaluation result schema version 2; this visblind reads up to 1"):
        load_dependence(tmp_path / "n.zarr", group=None)
    with pytest.raises(ResultError, match="is not an evaluation result: it lacks accuracy"):
        check(stamp(ev.drop_vars("accuracy"), "evaluation"), "evaluation", "x")
