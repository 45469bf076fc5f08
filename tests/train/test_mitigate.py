"""Mitigation recipes: YAML config, checked modality-aware LoRA, per-step JSONL, resume after a kill, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.mitigate import MitigateConfig, StopTraining, load_config, mitigate, save_config
from train.mitigate.lora import LoraPlan, check_patterns, lora_plan, modality_ranks, wrap_lora


@pytest.fixture(scope="module")
def answered(make_colour_manifest, tmp_path_factory) -> Path:
    """A 12-example colour manifest (EN/KO) keeping only rows with answers."""
    path = make_colour_manifest(tmp_path_factory.mktemp("mitigate_data"), 12)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    out = path.with_name("train.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["answer"]), encoding="utf-8")
    return out


def vdc(model: Path, manifest: Path, **kw) -> MitigateConfig:
    """Every VDC term on, tiny sizes (anchors: the English colour words, the fixture's image-dependent questions)."""
    base = dict(name="vdc", model=str(model), train_manifest=str(manifest), batch_size=4, max_steps=4, lora_r=4,
                projector_beta=2.0, drift_weight=1.0, contrast_weight=1.0, contrast_kl=0.5, align_weight=0.5,
                align_alpha=1.0, align_layers=(1, 2), align_hidden=16, anchor_manifest=str(manifest), anchor_lang="en",
                anchors_per_concept=2, checkpoint_every=2, threads=1, device="cpu")
    return MitigateConfig(**{**base, **kw})


# --- config -----------------------------------------------------------------------------------
def test_yaml_round_trip_and_relative_paths(tmp_path, tiny_llava_dir, answered) -> None:
    cfg = vdc(tiny_llava_dir, answered, pre={"manifest": str(answered), "steps": 3})
    path = save_config(cfg, tmp_path / "r.yaml")
    assert load_config(path) == cfg
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.jsonl").write_text("")
    (tmp_path / "rel.yaml").write_text(f"name: x\nmodel: {tiny_llava_dir}\ntrain_manifest: data/m.jsonl\n")
    assert load_config(tmp_path / "rel.yaml").train_manifest == str(tmp_path / "data" / "m.jsonl")


@pytest.mark.parametrize("text, needle", [
    ("name: x\nmodel: m\ntrain_manifest: t\nlamda1: 1\n", "unknown recipe field"),
    ("name: x\nmodel: m\ntrain_manifest: t\nprojector_beta: 0.5\n", "projector_beta"),
    ("name: x\nmodel: m\ntrain_manifest: t\ndrift_weight: 1\n", "anchor_manifest"),
    ("name: x\nmodel: m\ntrain_manifest: t\nlora_ranks: modality\n", "rank_store"),
    ("- a list\n", "YAML mapping"),
])
def test_bad_recipe_names_file_and_field(tmp_path, text, needle) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle) as err:
        load_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- modality-aware LoRA ------------------------------------------------------------------------
def test_modality_ranks_proportional_with_the_same_budget() -> None:
    assert modality_ranks([0.1, 0.3], 4) == [2, 6]  # mean share 0.2 -> rank 4
    assert modality_ranks([0.0, 1.0], 8) == [1, 16]  # never below 1
    with pytest.raises(ValueError):
        modality_ranks([0.0, 0.0], 4)


def test_layer_share_is_the_visual_segment_mean() -> None:
    import numpy as np
    import xarray as xr

    from train.mitigate.lora import layer_visual_share

    share = np.zeros((2, 3, 2, 1, 2))  # example, layer, head, source, segment (visual, text)
    share[..., 0] = np.arange(3)[None, :, None, None] * 0.1 + np.array([0.0, 0.2])[:, None, None, None]
    share[..., 1] = 1 - share[..., 0]
    ds = xr.Dataset({"attn_share": (("example", "layer", "head", "source", "segment"), share)},
                    coords={"layer": [0, 1, 2], "segment": ["visual", "text"]})
    np.testing.assert_allclose(layer_visual_share(ds), [0.1, 0.2, 0.3], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="every decoder layer"):
        layer_visual_share(ds.isel(layer=[0, 2]))


def test_bare_or_unmatched_pattern_keys_raise(tiny_llava_pair) -> None:
    names = [n for n, _ in tiny_llava_pair[0].named_modules()]
    with pytest.raises(ValueError, match="vision_tower"):  # a bare q_proj also matches the vision tower's
        check_patterns(names, LoraPlan({"q_proj": 4}, 2.0))
    with pytest.raises(ValueError, match=r"matched \[\]"):  # peft would silently ignore it
        check_patterns(names, LoraPlan({"model.language_model.layers.9.self_attn.q_proj": 4}, 2.0))


def test_wrapped_ranks_follow_the_plan_with_constant_scaling(tiny_llava_dir) -> None:
    from probe.models.loading import load_model

    adapter = load_model(tiny_llava_dir, attn_implementation="eager")
    plan = lora_plan(adapter, ("vision",), 4, 8, layer_ranks=[2, 4, 6], projector_beta=2.0)
    model = wrap_lora(adapter.model, plan)
    ranks = {n.removeprefix("base_model.model."): (m.r["default"], m.scaling["default"])
             for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})}
    assert ranks["model.language_model.layers.0.self_attn.q_proj"][0] == 2
    assert ranks["model.language_model.layers.2.mlp.down_proj"][0] == 6
    assert ranks["model.multi_modal_projector.linear_1"][0] == 8
    assert not any("vision_tower" in n for n in ranks)
    assert {s for _, s in ranks.values()} == {2.0}  # alpha / r constant


# --- training --------------------------------------------------------------------------------
def test_vdc_logs_every_term_each_step(tmp_path, tiny_llava_dir, answered) -> None:
    result = mitigate(vdc(tiny_llava_dir, answered, max_steps=2), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "main" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("task", "drift", "contrast", "align", "align_weight", "drift_mmd_v", "drift_w_embed", "loss"):
        assert all(key in r and r[key] == r[key] for r in rows), key
    assert rows[0]["drift_mmd_v"] == pytest.approx(0.0, abs=1e-6)  # v_0 against itself
    assert rows[0]["drift_w_embed"] == pytest.approx(0.0, abs=1e-9)  # LoRA leaves the embeddings alone
    assert load_config(result.final / "mitigate.yaml") == load_config(tmp_path / "run" / "mitigate.yaml")
    assert (result.final / "config.json").is_file() and (result.final / "align_head.safetensors").is_file()
    # the figure written beside the run plots exactly the logged values: each trace's (x, y), read back from the
    # HTML's plotly data, is the step and one column of steps.jsonl
    html = (tmp_path / "run" / "main" / "steps.html").read_text(encoding="utf-8")
    start = html.index("[", html.index("Plotly.newPlot("))
    traces = {t["name"]: t for t in json.JSONDecoder().raw_decode(html, start)[0]}
    assert set(traces) == {"loss", "task", "drift", "contrast", "align", "drift_mmd_v", "drift_w_embed", "align_weight"}
    for key, trace in traces.items():
        assert trace["x"] == [r["step"] for r in rows], key
        assert trace["y"] == pytest.approx([r[key] for r in rows], rel=1e-12, abs=0), key


def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_llava_dir, answered) -> None:
    cfg = vdc(tiny_llava_dir, answered)
    whole = mitigate(cfg, tmp_path / "whole", progress=False)

    def kill(step: int, _row: dict) -> None:
        if step == 3:
            raise StopTraining

    with pytest.raises(StopTraining):
        mitigate(cfg, tmp_path / "killed", progress=False, callback=kill)
    resumed = mitigate(cfg, tmp_path / "killed", progress=False)
    assert resumed.resumed_from == 2
    again = mitigate(cfg, tmp_path / "killed", progress=False)  # finished: kept, step time read from its log
    assert again.final == resumed.final and again.step_seconds > 0
    a, b = load_file(whole.final / "model.safetensors"), load_file(resumed.final / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    rows = lambda p: [json.loads(x) for x in (p / "main" / "steps.jsonl").read_text().splitlines()]  # noqa: E731
    ra, rb = rows(tmp_path / "whole"), rows(tmp_path / "killed")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-6)


def test_other_recipe_in_out_dir_raises(tmp_path, tiny_llava_dir, answered) -> None:
    save_config(vdc(tiny_llava_dir, answered), tmp_path / "mitigate.yaml")
    with pytest.raises(ValueError, match="different recipe"):
        mitigate(vdc(tiny_llava_dir, answered, lr=1e-2), tmp_path, progress=False)


def test_cli_trains_a_yaml_recipe(tmp_path, tiny_llava_dir, answered) -> None:
    from typer.testing import CliRunner

    from train.cli import app

    path = save_config(MitigateConfig(name="plain", model=str(tiny_llava_dir), train_manifest=str(answered),
                                      batch_size=4, max_steps=1, lora_r=4, threads=1, device="cpu"), tmp_path / "p.yaml")
    res = CliRunner().invoke(app, ["mitigate", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "main" / "final" / "mitigate.yaml").is_file()
    bad = CliRunner().invoke(app, ["mitigate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and "missing.yaml" in bad.output


def test_align_targets_come_from_the_initial_tower_when_vision_trains(tiny_llava_dir, answered) -> None:
    """With the vision tower trainable, targets are a frozen copy's features, not the drifting live tower's."""
    from probe.data.manifest import read_manifest
    from train.mitigate.loop import _Trainer

    cfg = vdc(tiny_llava_dir, answered, lora_r=0, freeze=(), projector_beta=0.0, drift_weight=0.0, contrast_weight=0.0,
              contrast_kl=0.0, align_alpha=0.0, anchor_manifest=None)
    tr = _Trainer(cfg, str(tiny_llava_dir), torch.device("cpu"))
    batch = tr.adapter.build_inputs(read_manifest(answered)[:2], padding_side="right")
    fresh = _Trainer(cfg.replace(freeze=("vision",)), str(tiny_llava_dir), torch.device("cpu"))
    want = fresh.targets(batch, None)  # vision frozen: the live projector input is the initial tower's
    with torch.no_grad():
        for p in tr.adapter.component("vision").parameters():
            p.add_(0.1 * torch.randn_like(p))
    got = tr.targets(batch, None)
    drifted = fresh.targets(batch, None)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    with torch.no_grad():  # and the perturbation did change what the live tower gives
        for p in fresh.adapter.component("vision").parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert not torch.allclose(fresh.targets(batch, None)[0], drifted[0])


def test_posthoc_stage_changes_only_the_projector(tmp_path, tiny_llava_dir, answered) -> None:
    from train.mitigate import ProjectorStage

    cfg = MitigateConfig(name="posthoc", model=str(tiny_llava_dir), train_manifest=str(answered), batch_size=4,
                         max_steps=1, lora_r=4, threads=1, device="cpu",
                         post=ProjectorStage(manifest=str(answered), steps=2, lr=1e-2))
    result = mitigate(cfg, tmp_path, progress=False)
    assert result.final == tmp_path / "post" / "final"
    main, post = load_file(tmp_path / "main" / "final" / "model.safetensors"), load_file(result.final / "model.safetensors")
    changed = {n for n in main if not torch.equal(main[n], post[n])}
    assert changed and all("multi_modal_projector." in n for n in changed), sorted(changed)[:3]


WORKER = """
import sys
from train.mitigate import load_config, mitigate
from accelerate import PartialState
mitigate(load_config(sys.argv[1]), sys.argv[2], progress=False)
state = PartialState()
open(f"{sys.argv[2]}/world-{state.process_index}.txt", "w").write(f"world {state.num_processes} rank {state.process_index}")
"""


def test_two_cpu_processes_equal_one(tmp_path, tiny_llava_dir, answered) -> None:
    """Data parallel over 2 gloo CPU processes (torchrun) gives the 1-process run's weights and losses."""
    import os
    import subprocess
    import sys

    cfg = vdc(tiny_llava_dir, answered, max_steps=2, checkpoint_every=10)
    one = mitigate(cfg, tmp_path / "one", progress=False)
    path = save_config(cfg, tmp_path / "r.yaml")
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "worker.py"), str(path), str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = sorted(p.read_text() for p in (tmp_path / "two").glob("world-*.txt"))
    assert seen == ["world 2 rank 0", "world 2 rank 1"]  # two processes in one group, not two separate runs
    a, b = load_file(one.final / "model.safetensors"), load_file(tmp_path / "two" / "main" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    rows = lambda p: [json.loads(x) for x in (p / "main" / "steps.jsonl").read_text().splitlines()]  # noqa: E731
    for x, y in zip(rows(tmp_path / "one"), rows(tmp_path / "two"), strict=True):
        for key in ("task", "drift", "contrast", "align", "loss"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key


def test_text_only_pass_equals_each_prompt_alone_without_its_image(tiny_llava_dir, answered) -> None:
    """Oracle: each row run alone (batch 1, no padding) on its tokens minus the image span gives the same answer log-prob."""
    from probe.data.manifest import read_manifest
    from probe.models.loading import load_model
    from probe.segments import Segment
    from train.mitigate.loop import text_only
    from train.mitigate.losses import answer_logprob

    adapter = load_model(tiny_llava_dir, attn_implementation="eager")
    examples = read_manifest(answered)[:4]
    examples[1] = replace(examples[1], prompt=examples[1].prompt + " 좀 더 긴 질문")  # rows of different lengths
    batch = adapter.build_inputs(examples, padding_side="right")
    inputs, labels = text_only(batch, pad_id=0)
    assert not (inputs["input_ids"] == adapter.image_token_id).any() and "pixel_values" not in inputs
    with torch.no_grad():
        got = answer_logprob(adapter.model(**inputs).logits, labels)
        for row in range(len(examples)):
            segs = batch.segments[row]
            keep = (segs == int(Segment.TEXT)) | (segs == int(Segment.ANSWER))
            ids, lab = batch.inputs["input_ids"][row][keep][None], batch.labels[row][keep][None]
            want = answer_logprob(adapter.model(input_ids=ids).logits, lab)
            torch.testing.assert_close(got[row : row + 1], want, rtol=0, atol=1e-5)
    assert int(inputs["attention_mask"].sum()) == int(((batch.segments == int(Segment.TEXT)) |
                                                     (batch.segments == int(Segment.ANSWER))).sum())


def test_anchor_projection_from_cached_tower_output_equals_a_full_pass(tiny_llava_dir, answered) -> None:
    """Vision frozen: after the projector changes, the cached-input projection equals a fresh full vision+projector pass."""
    from probe.data.manifest import read_manifest
    from probe.models.loading import load_model
    from train.mitigate.anchors import Anchors, anchor_examples

    adapter = load_model(tiny_llava_dir, attn_implementation="eager")
    adapter.model.requires_grad_(False)
    examples = anchor_examples(read_manifest(answered), "en", 2)
    cached = Anchors(adapter, examples)
    first = cached.projected(adapter.model)
    assert cached._projector_args is not None  # the tower is frozen: its output was kept
    with torch.no_grad():
        for p in adapter.component("projector").parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = cached.projected(adapter.model)
    want = Anchors(adapter, examples).projected(adapter.model)
    assert not torch.allclose(got, first)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for p in adapter.component("vision").parameters():  # a trainable tower: never cached
        p.requires_grad_(True)
    live = Anchors(adapter, examples)
    live.projected(adapter.model)
    assert live._projector_args is None
