"""Session-wide fixtures: tiny models of every family, a tiny LLaVA saved to a folder, and a small manifest."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


def _tiny_builders() -> dict[str, Callable[[], tuple[Any, Any]]]:
    from probe.testing import families as tiny

    return {
        "llava": lambda: tiny.tiny_llava(text_layers=2, text_dim=64),
        "internvl": tiny.tiny_internvl,
        "qwen2_vl": tiny.tiny_qwen2_vl,
        "qwen2_5_vl": tiny.tiny_qwen2_5_vl,
        "smolvlm": tiny.tiny_smolvlm,
        "idefics3": lambda: tiny.tiny_smolvlm(family="idefics3"),
        # anyres: a base tile plus a tile grid, a different number per example (LLaVA-1.6 / VARCO-VISION-2.0 layout)
        "llava_next": tiny.tiny_llava_next,
        "llava_onevision": tiny.tiny_llava_onevision,
        "gemma3": tiny.tiny_gemma3,  # image tokens attend to each other bidirectionally
        "qwen3_vl": tiny.tiny_qwen3_vl,  # DeepStack: visual rows added after decoder layers 0 and 1
        # several tiles per image, a different number per example
        "internvl-tiled": lambda: tiny.tiny_internvl(max_tiles=4),
        "smolvlm-split": lambda: tiny.tiny_smolvlm(image_splitting=True),
        "idefics3-split": lambda: tiny.tiny_smolvlm(family="idefics3", image_splitting=True),
    }


class _LazyModels(Mapping):
    """family -> (model, processor), each built on first use (seeded) and then shared."""

    def __init__(self) -> None:
        self._builders = _tiny_builders()
        self._built: dict[str, tuple[Any, Any]] = {}

    def __getitem__(self, family: str) -> tuple[Any, Any]:
        if family not in self._builders:
            raise KeyError(f"no tiny model for family {family!r}; known: {', '.join(self._builders)}")
        if family not in self._built:
            torch.manual_seed(0)
            self._built[family] = self._builders[family]()
        return self._built[family]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


@pytest.fixture(scope="session")
def tiny_models() -> Mapping[str, tuple[Any, Any]]:
    """family -> (model, processor) of a tiny random-weight model; built lazily, once per session.

    Tests must not change these models' weights (build their own with probe.testing for that).
    """
    return _LazyModels()


@pytest.fixture(scope="session")
def tiny_adapter(tiny_models) -> Callable[[str], Any]:
    """family -> the adapter over that family's session tiny model (built once per family)."""
    from probe.models import adapter_for

    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            cache[family] = adapter_for(*tiny_models[family])
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_llava_pair():
    """(model, processor) of a tiny random-weight LLaVA, built once."""
    from probe.testing import tiny_llava

    return tiny_llava(seed=0, text_layers=3, text_dim=64, vision_dim=32)


@pytest.fixture(scope="session")
def tiny_llava_adapter(tiny_llava_pair):
    from probe.models import adapter_for

    return adapter_for(*tiny_llava_pair)


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_llava_pair, tmp_path_factory) -> Path:
    """The tiny LLaVA saved with save_pretrained (safetensors) next to its processor."""
    model, processor = tiny_llava_pair
    path = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_colour_manifest(folder: Path, n: int) -> Path:
    """`n` examples: coloured squares, EN/KO colour questions, answers for every other one."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        colour = names[i % 3]
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste(COLOURS[colour], (4 + i % 5, 4, 24 + i % 5, 24))
        img.save(folder / f"{i}.png")
        ko = i % 2 == 1
        rows.append({
            "id": f"ex{i:03d}", "image": f"{i}.png",
            "prompt": "이 도형은 무슨 색입니까?" if ko else "What colour is the shape?" + " Answer in one word." * (i % 3),
            "answer": colour if i % 4 else None, "lang": "ko" if ko else "en", "question_type": "colour",
            "image_dependent": True, "labels": {"colour": colour},
        })
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def make_colour_manifest():
    """The manifest writer, for tests that need their own size."""
    return write_colour_manifest


@pytest.fixture(scope="session")
def colour_manifest(tmp_path_factory) -> Path:
    return write_colour_manifest(tmp_path_factory.mktemp("colours"), 9)


def _shared_basetemp(tmp_path_factory) -> Path:
    """The session's temp root, shared by pytest-xdist workers (each worker's own is one level down)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def organism_cache(tmp_path_factory) -> Callable[..., Any]:
    """`get(seed=0, config=None) -> OrganismResult`: each (recipe, seed) is trained once per test session.

    Every test that needs the organism (tests/train/test_organism.py, the notebook test) goes through
    this cache; a file lock makes xdist workers wait for one build instead of training twice.
    """
    root = _shared_basetemp(tmp_path_factory) / "organisms"
    root.mkdir(parents=True, exist_ok=True)

    def get(seed: int = 0, config: Any = None) -> Any:
        from dataclasses import asdict

        from train.organism import OrganismConfig, build_organism, existing_organism

        cfg = config or OrganismConfig()
        recipe = json.dumps({"seed": seed, "config": asdict(cfg)}, sort_keys=True, default=str)
        out = root / f"seed{seed}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
        with open(root / f"{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return existing_organism(out, seed=seed, config=cfg) or build_organism(out, seed=seed, config=cfg,
                                                                                  progress=False)

    return get


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the organism's measured numbers (recorded by tests/train/test_organism.py) so CI logs keep them."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])]
    lines = [value for r in reports for name, value in getattr(r, "user_properties", []) if name == "organism"]
    if lines:
        terminalreporter.section("model organism numbers")
        for line in lines:
            terminalreporter.write_line(line)
