"""End-to-end capture into a TraceStore, checked against eager attention and plain torch hooks."""

from __future__ import annotations

import copy
from dataclasses import replace
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import xarray as xr

from probe.capture import Capture, CaptureSpec, capture
from probe.data.manifest import read_manifest
from probe.models import BadExampleError, load_model
from probe.segments import SEGMENT_NAMES, Segment
from probe.store import IncomparableStoresError, TraceStore

FULL = CaptureSpec(keys=True, queries=True, resid=("query", "pooled", "tokens"), vision=True, dtype="float32",
                   batch_size=3, max_answer_tokens=4)
TOL = dict(atol=1e-5, rtol=1e-5)


def _oracle(adapter, example, spec):
    """Single-example unpadded forward of an eager copy: attentions, layer outputs (torch hooks), projector."""
    model = copy.deepcopy(adapter.model)
    model.set_attn_implementation("eager")
    layers = model.get_submodule("model.language_model.layers")
    outs = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o[0] if isinstance(o, tuple) else o))
             for i, layer in enumerate(layers)]
    proj = {}
    hooks.append(model.model.multi_modal_projector.register_forward_hook(lambda m, a, o: proj.__setitem__("out", o)))
    batch = adapter.build_inputs([example], padding_side="right")
    with torch.no_grad():
        res = model(**batch.inputs, output_attentions=True)
    for h in hooks:
        h.remove()
    return batch.segments[0], res.attentions, outs, proj["out"]


def _shares(attn, seg):
    """Float64 per-source segment shares from an eager [H, T, T] map."""
    onehot = torch.nn.functional.one_hot(seg, len(Segment)).double()
    per_query = attn.double() @ onehot  # [H, T, S]
    prompt = ((seg != Segment.PAD) & (seg != Segment.ANSWER)).nonzero().max()
    out = torch.full((attn.shape[0], 3, len(Segment)), float("nan"), dtype=torch.float64)
    out[:, 0] = per_query[:, prompt]
    for k, kind in ((1, Segment.ANSWER), (2, Segment.TEXT)):
        sel = seg == kind
        if sel.any():
            out[:, k] = per_query[:, sel].mean(1)
    return out


@pytest.fixture(scope="module")
def examples(colour_manifest):
    return read_manifest(colour_manifest)


@pytest.fixture(scope="module")
def store(tiny_llava_adapter, examples, tmp_path_factory):
    return capture(tiny_llava_adapter, examples, tmp_path_factory.mktemp("cap") / "s.zarr", FULL, progress=False)


def test_store_matches_eager_oracle(store, tiny_llava_adapter, examples):
    ds = store.dataset
    assert list(ds.example.values) == [e.id for e in examples]
    assert list(ds.segment.values) == list(SEGMENT_NAMES)
    for i in (0, 1, 5):
        ex = examples[i]
        seg, attentions, outs, proj = _oracle(tiny_llava_adapter, ex, FULL)
        row = ds.isel(example=i).compute()
        n = int(row.seq_len)
        assert n == seg.numel()
        np.testing.assert_array_equal(row.segment_ids.values[:n], seg.numpy())
        assert (row.segment_ids.values[n:] == -1).all()
        qpos = row.query_position.values
        for layer, attn in enumerate(attentions):
            attn = attn[0]
            np.testing.assert_allclose(row.attn_share.sel(layer=layer).values, _shares(attn, seg).numpy(), **TOL)
            for q, p in enumerate(qpos):
                got = row.attn_pattern.sel(layer=layer).isel(query=q).values
                if p < 0:
                    assert np.isnan(got).all()
                else:
                    np.testing.assert_allclose(got[:, :n], attn[:, p].numpy(), **TOL)
                    assert np.isnan(got[:, n:]).all()
            hidden = outs[layer][0]
            np.testing.assert_allclose(row.hook_resid_post_tokens.sel(layer=layer).values[:n], hidden.numpy(), **TOL)
            vis = seg == Segment.VISUAL
            np.testing.assert_allclose(row.hook_resid_post_pooled.sel(layer=layer, segment="visual").values,
                                       hidden[vis].mean(0).numpy(), **TOL)
            np.testing.assert_allclose(row.hook_resid_post.sel(layer=layer, query="last_prompt").values,
                                       hidden[qpos[0]].numpy(), **TOL)
        np.testing.assert_allclose(row.projector_out.values[: int(row.n_vtoken)], proj[0].numpy(), **TOL)
        assert int(row.n_vtoken) == int(vis.sum())


def test_padding_side_does_not_change_the_store(store, tiny_llava_adapter, examples, tmp_path):
    right = capture(tiny_llava_adapter, examples, tmp_path / "r.zarr",
                    CaptureSpec(**{**FULL.__dict__, "padding_side": "right", "batch_size": 4}), progress=False)
    for name in ("attn_share", "attn_pattern", "hook_resid_post_pooled", "hook_rot_k", "segment_ids"):
        xr.testing.assert_allclose(right.dataset[name].compute(), store.dataset[name].compute(), atol=1e-5, rtol=1e-5)


def test_store_provenance_and_coords(store, examples):
    attrs = store.attrs
    assert attrs["adapter"] == "llava" and len(attrs["weights_hash"]) == 64
    assert CaptureSpec.from_json(attrs["capture_spec"]) == FULL
    assert list(store.dataset.lang.values) == [e.lang for e in examples]
    assert list(store.dataset.label_colour.values) == [e.labels["colour"] for e in examples]
    assert store.dataset.hook_rot_k.attrs["tl_site"] == "blocks.{layer}.attn.hook_rot_k"


def test_layer_selection_and_dtype(tiny_llava_adapter, examples, tmp_path):
    """One `layers` selection: every per-layer variable holds exactly those layers, none of them all-NaN."""
    spec = CaptureSpec(layers=(1,), resid=("pooled",), keys=True, dtype="float16", attn_pattern=False)
    st = capture(tiny_llava_adapter, examples[:4], tmp_path / "l.zarr", spec, progress=False)
    ds = st.dataset.compute()
    assert list(ds.layer.values) == [1]
    assert ds.hook_resid_post_pooled.dtype == np.float16
    for name in ("attn_share", "hook_resid_post_pooled", "hook_rot_k"):
        assert ds[name].dims[1] == "layer"
        assert np.isfinite(ds[name].sel(layer=1).values).any(), name
    assert not np.isnan(ds.attn_share.sel(source="last_prompt").values).any()
    assert "attn_pattern" not in ds
    with pytest.raises(ValueError, match="replaced by one `layers`"):
        CaptureSpec.from_json('{"layers": [1], "resid_layers": [0, 2]}')


def test_recordables_registry_drives_store_variables(tiny_llava_adapter):
    """Each registry entry is one store variable with its dims, dtype and TransformerLens name; extra= switches one on."""
    from probe.capture.recordables import RECORDABLES, Recordable, register, selected
    from probe.capture.run import TL_SITES, _variables

    cap = Capture(tiny_llava_adapter, FULL)
    variables = _variables(cap)
    # every entry the spec asks for, but those read at a site the family lacks (DeepStack: Qwen3-VL only)
    assert set(variables) == {r.name for r in selected(FULL) if r.site is None or r.site in tiny_llava_adapter.sites}
    assert "deepstack_out" in {r.name for r in selected(FULL)} and "deepstack_out" not in variables
    for name, var in variables.items():
        rec = RECORDABLES[name]
        assert var.dims == ("example",) + rec.dims and var.dtype == rec.store_dtype(FULL)
        assert var.attrs.get("tl_site") == rec.tl_hook == TL_SITES.get(name)
    with pytest.raises(ValueError, match="already registered"):
        register(RECORDABLES["attn_share"])
    with pytest.raises(ValueError, match="unknown recordables"):
        Capture(tiny_llava_adapter, CaptureSpec(extra=("nope",)))
    # a new quantity is one entry: the embedding output's norm per position, switched on by name
    from probe.capture.recordables import MODULE

    rec = Recordable("embed_norm", MODULE, ("position",), "float32", np.nan, lambda s: False,
                     lambda v, b: v.unpad(v.saved["embed_norm"][b], b, 0).numpy(), site="lm.layer.{i}.resid",
                     reduce=lambda h, seg, q: h.float().norm(dim=-1), grows={"position": "position"})
    register(rec)
    try:
        spec = CaptureSpec(extra=("embed_norm",), attn_pattern=False, layers=(0,), dtype="float32")
        cap = Capture(tiny_llava_adapter, spec)
        assert "embed_norm" in _variables(cap)
    finally:
        del RECORDABLES["embed_norm"]


def test_loaded_from_folder_captures_identically(store, tiny_llava_dir, examples, tmp_path):
    adapter = load_model(tiny_llava_dir)
    again = capture(adapter, examples, tmp_path / "f.zarr", FULL, progress=False)
    assert again.attrs["weights_hash"] == store.attrs["weights_hash"]
    for name in ("attn_share", "attn_pattern", "hook_resid_post_tokens", "projector_out"):
        xr.testing.assert_allclose(again.dataset[name].compute(), store.dataset[name].compute(), atol=1e-6, rtol=1e-6)


def test_user_nnsight_edit_and_capture_share_one_forward(tiny_llava_adapter, examples):
    """An edit in the user's invoke and our taps in an empty invoke: same as hooking the edit in by hand."""
    adapter = tiny_llava_adapter
    spec = CaptureSpec(resid=("pooled",), dtype="float32")
    cap = Capture(adapter, spec)
    batch = adapter.build_inputs(examples[:3])
    with torch.inference_mode():
        with cap.recording(batch), cap.envoy.trace() as tracer:
            with tracer.invoke(**batch.inputs):
                cap.envoy.model.language_model.layers[0].output[:] *= 0.5
            with tracer.invoke():
                saved = cap.tap(batch)
    edited = cap.collect(batch, saved)
    handle = adapter.decoder_layers[0].register_forward_hook(lambda m, a, o: o * 0.5)
    try:
        reference = Capture(adapter, spec).run(batch)
    finally:
        handle.remove()
    plain = Capture(adapter, spec).run(batch)
    for got, want, base in zip(edited, reference, plain):
        np.testing.assert_allclose(got["attn_share"], want["attn_share"], **TOL)
        # layer 0's own output: nnsight reads it before a torch hook rewrites it, so compare with the plain run
        np.testing.assert_allclose(got["hook_resid_post_pooled"][0], 0.5 * base["hook_resid_post_pooled"][0], **TOL, equal_nan=True)
        np.testing.assert_allclose(got["hook_resid_post_pooled"][1:], want["hook_resid_post_pooled"][1:], **TOL, equal_nan=True)
        assert not np.allclose(got["attn_share"][1:], base["attn_share"][1:], equal_nan=True)


def test_bad_image_stops_with_one_line_naming_the_example(tiny_llava_adapter, examples, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = [examples[0], type(examples[1])(**{**examples[1].__dict__, "id": "corrupt", "image": broken}),
           type(examples[2])(**{**examples[2].__dict__, "id": "gone", "image": tmp_path / "nope.png"})]
    with pytest.raises(BadExampleError, match="example 'corrupt': corrupt image"):
        capture(tiny_llava_adapter, bad, tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()
    st = capture(tiny_llava_adapter, bad, tmp_path / "y.zarr", skip_bad=True, progress=False)
    assert st.example_ids == [examples[0].id]
    reasons = {s["example"]: s["reason"] for s in st.skipped}
    assert reasons.keys() == {"corrupt", "gone"} and reasons["gone"].startswith("image not found")


def test_two_placeholders_is_a_bad_example(tiny_llava_adapter, examples):
    ex = type(examples[0])(**{**examples[0].__dict__, "prompt": "<image> and <image>?"})
    with pytest.raises(BadExampleError, match="2 image placeholders"):
        tiny_llava_adapter.build_inputs([ex])


def test_incomparable_stores_are_refused(store, tiny_llava_adapter, examples, tmp_path):
    other = capture(tiny_llava_adapter, examples[:3], tmp_path / "o.zarr", CaptureSpec(layers=(0, 1)), progress=False)
    with pytest.raises(IncomparableStoresError):
        store.check_comparable(other)


def _committed(path) -> int:
    import json

    meta = path / "zarr.json"
    try:
        return int(json.loads(meta.read_text())["attributes"].get("_visblind_committed", 0))
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_sigkill_mid_capture_then_resume_equals_uninterrupted(tiny_llava_dir, make_colour_manifest, tmp_path):
    """`probe capture` killed with SIGKILL mid-run, started again, ends equal to an uninterrupted run."""
    manifest = make_colour_manifest(tmp_path / "data", 48)
    spec = tmp_path / "spec.json"
    spec.write_text(CaptureSpec(batch_size=1, resid=("pooled",), keys=True).to_json())
    cmd = [sys.executable, "-m", "probe.cli", "capture", str(tiny_llava_dir), str(manifest), "--spec", str(spec),
           "--chunk", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _committed(killed) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _committed(killed)
    assert 0 < at_kill < 48, f"kill landed at {at_kill} committed examples; the test needs a mid-run kill"
    subprocess.run(cmd + ["--out", str(killed)], env=env, check=True, capture_output=True)
    whole = tmp_path / "whole.zarr"
    subprocess.run(cmd + ["--out", str(whole)], env=env, check=True, capture_output=True)
    a, b = TraceStore.open(killed), TraceStore.open(whole)
    assert a.example_ids == b.example_ids and len(a.example_ids) == 48
    xr.testing.assert_identical(a.dataset.drop_attrs(), b.dataset.drop_attrs())


def test_vocab_group_holds_the_decoder_embeddings(tiny_llava_adapter, examples, tmp_path):
    from probe.analysis._io import open_group
    from probe.analysis.drift import vocab_drift

    spec = CaptureSpec(vocab=True, dtype="float32", attn_pattern=False)
    path = tmp_path / "v.zarr"
    st = capture(tiny_llava_adapter, examples[:3], path, spec, progress=False)
    vocab = open_group(st, "vocab")
    assert "groups: vocab" in st.summary()  # probe info lists it
    weight = tiny_llava_adapter.input_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(vocab["embedding"].values, weight)
    tok = tiny_llava_adapter.processor.tokenizer
    assert str(vocab["token"].values[tok.convert_tokens_to_ids("<image>")]) == "<image>"
    same = vocab_drift(st, st)
    assert float(same["top1_changed"]) == 0.0
    np.testing.assert_array_equal(same["script_share"].sel(store="before"), same["script_share"].sel(store="after"))
    # a store without the group is still comparable with one that has it
    plain = capture(tiny_llava_adapter, examples[:3], tmp_path / "p.zarr", replace(spec, vocab=False), progress=False)
    st.check_comparable(plain)


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision", "internvl-tiled", "qwen2_vl", "qwen2_5_vl",
                                    "smolvlm-split", "idefics3", "gemma3", "qwen3_vl"])
def test_visual_rows_per_example_in_decoder_order(tiny_models, family, tmp_path):
    """Batched capture of images with different tile / patch counts. Oracle, per example alone (torch hooks):
    projector_out = the decoder's input embeddings at the VISUAL positions, in sequence order; vision_out = the
    tower's rows put in order by the adapter; the layout variables = adapter.visual_layout. NaN / -1 beyond."""
    from PIL import Image

    from probe.data.example import Example
    from probe.models.registry import adapter_for

    adapter = adapter_for(*tiny_models[family])
    rng = np.random.default_rng(3)
    sizes = ((40, 48), (64, 30), (20, 20))
    exs = [Example(f"e{i}", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "What is it?")
           for i, (h, w) in enumerate(sizes)]
    spec = CaptureSpec(attn_pattern=False, resid=(), projector=True, vision=True, dtype="float32", batch_size=3)
    ds = capture(adapter, exs, tmp_path / "s.zarr", spec, progress=False).dataset.compute()
    for i, ex in enumerate(exs):
        got = {}
        batch = adapter.build_inputs([ex])
        hooks = [
            adapter.decoder_layers[0].register_forward_pre_hook(
                lambda m, a, k: got.__setitem__("embeds", (a[0] if a else k["hidden_states"])[0]), with_kwargs=True),
            adapter.module("vision.out").register_forward_hook(lambda m, a, o: got.__setitem__("vision", o)),
        ]
        with torch.no_grad():
            adapter.model(**batch.inputs)
        for h in hooks:
            h.remove()
        visual = batch.segments[0] == Segment.VISUAL
        wants = {"projector_out": got["embeds"][visual].numpy(),
                 "vision_out": adapter.visual_rows("vision.out", adapter.site_tensor("vision.out", got["vision"]),
                                                   batch)[0].numpy()}
        for name, want in wants.items():
            row = ds[name].isel(example=i).values
            n = int(np.isfinite(row).all(-1).sum())
            assert n == len(want), (name, n, len(want))
            np.testing.assert_allclose(row[:n], want, **TOL)
            assert np.isnan(row[n:]).all()
        layout = adapter.visual_layout(batch)[0]
        n = int(ds["n_vtoken"].isel(example=i))
        assert n == int(visual.sum()) == len(layout)
        for attr in ("tile", "row", "col", "box", "tile_box"):
            got_attr = ds[f"visual_{attr}"].isel(example=i).values
            np.testing.assert_array_equal(got_attr[:n], getattr(layout, attr))
        assert (ds["visual_tile"].isel(example=i).values[n:] == -1).all()
        np.testing.assert_array_equal(ds["image_size"].isel(example=i).values, layout.image_size)
        assert tuple(layout.image_size) == sizes[i]
