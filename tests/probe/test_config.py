"""probe.config: one loader for every config file; each bad file is one line naming the file and line or key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from probe.capture import CaptureSpec
from probe.config import ConfigError, load, read_config


@dataclass(frozen=True)
class _Inner:
    manifest: str
    steps: int = 1


@dataclass(frozen=True)
class _Cfg:
    name: str
    data: str | None = None
    seeds: tuple[int, ...] = (0,)
    lr: float = 1e-3
    flag: bool = False
    stage: _Inner | None = None


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_json_give_the_same_config_with_relative_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "m.jsonl").write_text("")
    y = _write(tmp_path, "c.yaml", "name: a\ndata: d/m.jsonl\nseeds: [1, 2]\nlr: 1\nstage: {manifest: d/m.jsonl}\n")
    j = _write(tmp_path, "c.json", '{"name": "a", "data": "d/m.jsonl", "seeds": [1, 2], "lr": 1, '
                                   '"stage": {"manifest": "d/m.jsonl"}}')
    paths = ("data", "stage.manifest")
    a, b = load(_Cfg, y, paths=paths), load(_Cfg, j, paths=paths)
    assert a == b
    assert a.data == str(tmp_path / "d" / "m.jsonl") and a.seeds == (1, 2) and a.lr == 1.0 and isinstance(a.lr, float)
    assert a.stage == {"manifest": str(tmp_path / "d" / "m.jsonl")}  # nested mappings are the dataclass's to build
    hub = _write(tmp_path, "h.yaml", "name: a\ndata: org/model\n")
    assert load(_Cfg, hub, paths=paths).data == "org/model"  # no such local path: a hub id stays as written


@pytest.mark.parametrize("name, text, needle", [
    ("tag.yaml", "name: a\ndata: !!python/object/apply:os.system ['touch PWNED']\n", ":2: YAML tag"),
    ("syntax.yaml", "name: a\nseeds: [1, 2\nlr: 3\n", ":3: YAML syntax error"),
    ("unknown.yaml", "name: a\nlearning_rate: 3\n", ":2: unknown cfg field 'learning_rate'"),
    ("type.yaml", "name: a\nlr: fast\n", ":2: cfg field 'lr' must be float, got 'fast'"),
    ("seeds.yaml", "name: a\nseeds: 3\n", ":2: cfg field 'seeds' must be a list of int, got 3"),
    ("bool.yaml", "name: a\nseeds: [true]\n", ":2: cfg field 'seeds.0' must be int"),
    ("nested.yaml", "name: a\nstage:\n  manifest: m\n  stpes: 2\n", ":4: unknown cfg field 'stpes'"),
    ("empty.yaml", "\n\n", ": empty cfg file"),
    ("list.yaml", "- a\n", ": a cfg is a YAML mapping"),
    ("bad.json", '{"name": "a",\n "lr": }', ":2: invalid JSON"),
    ("missing.yaml", "data: x\n", ": _Cfg.__init__() missing 1 required positional argument: 'name'"),
])
def test_each_bad_file_is_one_line_naming_file_and_line(tmp_path, name, text, needle):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        load(_Cfg, path, what="cfg")
    msg = str(err.value)
    assert msg.startswith(str(path)) and needle in msg and "\n" not in msg, msg
    assert not (tmp_path / "PWNED").exists()


def test_where_names_nested_keys(tmp_path):
    cfg = read_config(_write(tmp_path, "g.yaml", "a: 1\nlist:\n  - name: x\n    params: {y: [2]}\n"))
    assert cfg.where("list", 0, "params", "y") == f"{cfg.path}:4"
    assert cfg.where("nope") == str(cfg.path)


def test_capture_spec_file_yaml_json_and_errors(tmp_path):
    spec = CaptureSpec.from_file(_write(tmp_path, "s.yaml", "layers: [0, 2]\nkeys: true\n"))
    assert spec == CaptureSpec(layers=(0, 2), keys=True)
    assert CaptureSpec.from_file(_write(tmp_path, "s.json", '{"layers": [0, 2], "keys": true}')) == spec
    bad = _write(tmp_path, "bad.json", '{"layers": [0, 2],\n "keys": tru}')
    with pytest.raises(ConfigError, match=rf"^{bad}:2: invalid JSON"):
        CaptureSpec.from_file(bad)
    legacy = _write(tmp_path, "old.json", '{"resid_layers": [0]}')
    with pytest.raises(ConfigError, match=rf"^{legacy}: CaptureSpec fields \['resid_layers'\] were replaced"):
        CaptureSpec.from_file(legacy)


def test_probe_capture_spec_json_error_names_the_file(tiny_llava_dir, colour_manifest, tmp_path):
    from typer.testing import CliRunner

    from probe.cli import app

    spec = _write(tmp_path, "spec.json", '{"layers": [0,]}')
    result = CliRunner().invoke(app, ["capture", str(tiny_llava_dir), str(colour_manifest), "--out",
                                      str(tmp_path / "s.zarr"), "--spec", str(spec)])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{spec}:1: invalid JSON" in lines[0], result.output
    assert not (tmp_path / "s.zarr").exists()
