"""The organism's build rules without training it: stages stop at their target, threads follow the free cores,
and `--out` never overwrites a folder that is not an organism's (issue 23, issue 27 item 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import train.organism as organism
from probe.data.example import Example
from probe.data.synth import SynthConfig
from probe.models.registry import adapter_for
from probe.testing.families import tiny_llava
from train.organism import MARKER, OrganismConfig, build_organism, free_threads, train_to_target
from train.sft import SFTConfig

MICRO = OrganismConfig(stage1_steps=2, stage2_steps=2, batch_size=4, threads=1, holdout=2, check_every=1,
                       synth=SynthConfig(stage1_scenes=6, stage1_text_scenes=1, stage2_examples=8, eval_scenes=2,
                                         eval_text_scenes=1, eval_text_answerable=4))


def _foreign(tmp_path: Path) -> tuple[Path, dict[Path, str]]:
    out = tmp_path / "mine"
    files = {out / "base" / "note.txt": "my note", out / "ko_ft" / "keep.bin": "x", out / "data" / "m.jsonl": "{}\n"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return out, files


def test_a_folder_with_other_files_is_refused_and_left_as_it_was(tmp_path) -> None:
    out, files = _foreign(tmp_path)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"not an organism folder .*nothing was changed"):
        build_organism(out, seed=0, config=MICRO, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert all(p.read_text() == text for p, text in files.items())


def test_cli_refuses_in_one_line(tmp_path) -> None:
    from train.cli import app

    out, files = _foreign(tmp_path)
    result = CliRunner().invoke(app, ["organism", "--out", str(out)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not an organism folder" in lines[0] and str(out) in lines[0]
    assert all(p.read_text() == text for p, text in files.items())


def test_a_file_is_refused(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_text("mine")
    with pytest.raises(ValueError, match="not a folder"):
        build_organism(path, seed=0, config=MICRO, progress=False)
    assert path.read_text() == "mine"


def test_new_empty_and_own_folders_are_built(tmp_path) -> None:
    out = tmp_path / "new"
    first = build_organism(out, seed=0, config=MICRO, progress=False)
    assert (out / MARKER).is_file() and (first.ko_ft / "config.json").is_file()
    again = build_organism(out, seed=0, config=MICRO, progress=False)  # its own folder: rebuilt
    assert (again.base / "config.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (build_organism(empty, seed=0, config=MICRO, progress=False).base / "config.json").is_file()


def _micro_adapter():
    model, processor = tiny_llava(0, vision_layers=1, vision_dim=32, text_layers=2, text_dim=32, heads=2, kv_heads=1,
                                  vision_heads=2)
    return adapter_for(model, processor)


def _examples() -> list[Example]:
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    return [Example(f"e{i}", Image.new("RGB", (32, 32), rgb), "What color?", name, lang="en")
            for i, (name, rgb) in enumerate(colours.items())]


def test_a_stage_stops_at_the_first_check_that_reaches_its_target(tmp_path) -> None:
    """Oracle: a measured accuracy scripted per check; the stage must stop at the first check >= target."""
    scripted = iter([0.5, 0.97, 0.99, 1.0])
    cfg = SFTConfig(lr=1e-3, max_steps=50, batch_size=2, threads=1, device="cpu", log_every=1)
    res = train_to_target(_micro_adapter(), _examples(), _examples(), cfg, tmp_path, target=0.99, every=3,
                          progress=False, measure=lambda: {"en": next(scripted)})
    assert res["reached"] and res["steps"] == 9 and [c["step"] for c in res["checks"]] == [3, 6, 9]
    assert (tmp_path / "final" / "config.json").is_file()
    assert len((tmp_path / "loss.jsonl").read_text().splitlines()) == 9


def test_a_stage_needs_its_target_at_patience_consecutive_checks(tmp_path) -> None:
    scripted = iter([0.5, 0.99, 0.97, 0.99, 1.0, 0.99])
    cfg = SFTConfig(lr=1e-3, max_steps=50, batch_size=2, threads=1, device="cpu", log_every=1)
    res = train_to_target(_micro_adapter(), _examples(), _examples(), cfg, tmp_path, target=0.99, every=3, patience=2,
                          progress=False, measure=lambda: {"en": next(scripted)})
    assert res["reached"] and res["steps"] == 15


def test_a_stage_that_never_reaches_its_target_stops_at_its_cap(tmp_path) -> None:
    cfg = SFTConfig(lr=1e-3, max_steps=7, batch_size=2, threads=1, device="cpu", log_every=1)
    res = train_to_target(_micro_adapter(), _examples(), _examples(), cfg, tmp_path, target=0.99, every=3,
                          progress=False, measure=lambda: {"en": 0.5})
    assert not res["reached"] and res["steps"] == 7 and len(res["checks"]) == 2
    assert (tmp_path / "final" / "config.json").is_file()


@pytest.mark.parametrize(("load", "cores", "expected"), [(0.0, 2, 2), (0.9, 2, 1), (1.6, 2, 1), (7.5, 2, 1),
                                                          (0.2, 16, 2), (0.0, 1, 1)])
def test_threads_follow_the_free_cores(monkeypatch, load, cores, expected) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert free_threads() == expected


def test_config_refuses_bad_targets() -> None:
    with pytest.raises(ValueError, match="targets"):
        OrganismConfig(stage2_target=1.5)
    with pytest.raises(ValueError, match="threads"):
        OrganismConfig(threads=-1)
    assert organism.OrganismConfig().threads == 0  # chosen from the free cores
