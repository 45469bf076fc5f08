"""Notebooks are tests: every notebook under examples/ runs top to bottom on a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "examples").glob("*.ipynb"))


@pytest.mark.organism
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, organism_cache, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    # the kernel inherits the environment: the notebook reuses the session's organism instead of training it again
    monkeypatch.setenv("VISBLIND_ORGANISM_DIR", str(organism_cache(0).base.parent))
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} is committed with outputs"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    # execute() raises on the first failing cell; every code cell must also have run
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS, "examples/ should hold at least one notebook"
