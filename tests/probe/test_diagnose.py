"""probe diagnose: the scorer against probe.eval's, the restored-share interval, ranking, the result file, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from probe.diagnose import SCHEMA_VERSION, diagnose, read_diagnosis
from probe.diagnose.causal import plan, visually_dependent
from probe.diagnose.result import Effect
from probe.diagnose.run import decide, diagnosis_json, rank, select
from probe.eval.intervals import cluster_restored_ci


def _effect(target: str, restored: float, low: float, n: int) -> Effect:
    return Effect(name=f"swap {target}", kind="swap", target=target, restored=restored, low=low, high=1.0, vd={},
                  n_params=n)


def test_scorer_equals_evaluate_dependence(tiny_llava_adapter, colour_manifest) -> None:
    """Oracle: probe.eval.dependence's visually_dependent on the same examples, example by example."""
    from probe.data.manifest import read_manifest
    from probe.eval.dependence import evaluate_dependence

    examples = select(read_manifest(colour_manifest), 20)
    ours = visually_dependent(tiny_llava_adapter, plan(examples))
    ds = evaluate_dependence(tiny_llava_adapter, examples, progress=False)
    assert ours.tolist() == ds["visually_dependent"].values.tolist()


def test_restored_share_and_its_interval() -> None:
    units = [f"img{i // 2}" for i in range(20)]
    before, after = np.ones(20, bool), np.zeros(20, bool)
    half = np.array([i % 4 < 2 for i in range(20)])  # 10 of 20, whole images
    point, low, high = cluster_restored_ci(before, after, np.stack([before, after, half]), units)
    assert point.tolist() == [1.0, 0.0, 0.5] and low[0] == high[0] == 1.0 and low[1] == high[1] == 0.0
    assert 0.1 < low[2] < 0.5 < high[2] < 0.9
    same, _, _ = cluster_restored_ci(before, before, np.stack([half]), units)
    assert np.isnan(same).all()  # nothing lost: nothing to restore
    one = before.copy()
    one[:2] = False  # one image of ten lost its dependence; the edit restores it
    point, low, _ = cluster_restored_ci(before, one, np.stack([before]), units)
    assert point[0] == 1.0 and low[0] == 0.0  # resamples without that image restore nothing: no confident cause


def test_rank_breaks_ties_toward_the_smaller_component_and_decide_states_the_rule() -> None:
    ranked = rank([_effect("decoder", 1.0, 1.0, 1000), _effect("lm.qk", 0.98, 0.9, 50), _effect("vision", 0.2, 0.0, 10)])
    assert [e.target for e in ranked] == ["lm.qk", "decoder", "vision"]
    assert decide(ranked, 0.5, gap=1.0)[0] == "lm.qk"
    weak = rank([_effect("projector", 0.6, 0.4, 10), _effect("vision", 0.3, 0.1, 10)])
    named, reason = decide(weak, 0.5, gap=1.0)
    assert named == "no single cause" and "projector 60%" in reason
    assert decide(ranked, 0.5, gap=0.0)[0] == "no single cause"


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    from probe.testing.families import tiny_llava

    out = {}
    for name, kw in (("a", {}), ("b", {}), ("wide", {"text_dim": 64})):
        model, processor = tiny_llava(0 if name == "a" else 1, text_layers=2, text_dim=kw.get("text_dim", 32), heads=2,
                                      kv_heads=1, vision_layers=1, vision_dim=32, vision_heads=2)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        processor.save_pretrained(path)
        out[name] = path
    return out


def test_diagnose_writes_a_versioned_result_whose_control_is_before(saved_pair, colour_manifest, tmp_path) -> None:
    d = diagnose(saved_pair["a"], saved_pair["b"], colour_manifest, tmp_path / "d", images=20, analyses=False, n_boot=200)
    again = read_diagnosis(tmp_path / "d")
    assert diagnosis_json(again) == diagnosis_json(d)  # NaN restored shares (nothing lost) survive the round trip
    assert (tmp_path / "d" / "diagnosis.html").is_file()
    control = d.controls[0]
    assert control.target == "all" and control.vd == d.behaviour["before"]  # everything swapped = BEFORE exactly
    assert {e.target for e in d.ranked} >= {"vision", "projector", "embed", "lm.qk", "decoder"}
    assert len(d.patches) == 2 * (2 + 1)


def test_a_newer_result_is_refused_in_one_line(saved_pair, colour_manifest, tmp_path) -> None:
    diagnose(saved_pair["a"], saved_pair["a"], colour_manifest, tmp_path, images=20, analyses=False, n_boot=50)
    path = tmp_path / "diagnosis.json"
    data = json.loads(path.read_text())
    data["version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="newer than this visblind reads"):
        read_diagnosis(path)


def test_cli_refuses_two_architectures_in_one_line(saved_pair, colour_manifest, tmp_path) -> None:
    from probe.cli import app

    res = CliRunner().invoke(app, ["diagnose", str(saved_pair["a"]), str(saved_pair["wide"]), str(colour_manifest),
                                   "--out", str(tmp_path / "x"), "--no-analyses"])
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]  # transformers' load bars aside
    assert res.exit_code == 2 and len(lines) == 1 and "not one architecture" in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "x").exists()

