"""`interventions run` on a bad grid file: one line naming the file and line, exit code 2, nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from interventions.cli import app
from interventions.runner import GridConfig

HEAD = "model: m\nmanifest: x\n"


@pytest.mark.parametrize("text, needle", [
    (HEAD + "donor: !!python/object/apply:os.system ['touch PWNED']\n", ":3: YAML tag"),
    (HEAD + "interventions:\n  - {name: boost, params: {alpha: [0.1]}\n", ":5: YAML syntax error in grid (expected ',' or '}', but got '<stream end>'; while parsing a flow mapping at line 4)"),
    (HEAD + "interventions:\n  - name: boost\n    params: {alpah: [0.1]}\n", ":5: intervention 'boost' has no parameter 'alpah'"),
    (HEAD + "interventions:\n  - name: boost\n    params:\n      alpha: [high]\n",
     ":6: intervention 'boost': parameter 'alpha' must be float values, got 'high'"),
    (HEAD + "seeds: 3\n", ":3: grid field 'seeds' must be a list of int, got 3"),
    (HEAD + "batch_size: '8'\n", ":3: grid field 'batch_size' must be int"),
    ("", ": empty grid file"),
    (HEAD + "intervention: []\n", ":3: unknown grid field 'intervention'"),
    (HEAD + "interventions:\n  - name: nope\n", ":4: no intervention named 'nope'"),
])
def test_bad_grid_is_one_line_naming_file_and_line(tmp_path, text, needle):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(grid), "--out", str(tmp_path / "run"), "--quiet"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {grid}") and needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()


def test_grid_json_equals_yaml(tmp_path):
    (tmp_path / "m.jsonl").write_text("")
    y = tmp_path / "g.yaml"
    y.write_text("model: org/m\nmanifest: m.jsonl\nseeds: [0, 1]\ninterventions:\n  - {name: boost, params: {alpha: [0.1, 1]}}\n")
    j = tmp_path / "g.json"
    j.write_text('{"model": "org/m", "manifest": "m.jsonl", "seeds": [0, 1], '
                 '"interventions": [{"name": "boost", "params": {"alpha": [0.1, 1]}}]}')
    a, b = GridConfig.from_yaml(y), GridConfig.from_yaml(j)
    assert a == b and a.manifest == str((tmp_path / "m.jsonl").resolve()) and a.model == "org/m"
    assert a.seeds == (0, 1) and a.interventions[0].params == {"alpha": (0.1, 1)}
