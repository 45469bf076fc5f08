"""TraceStore schema 2: string variables, the tokenisation check, groups, the writer lock, old stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from probe.store import IncomparableStoresError, TraceStore, TraceStoreWriter, VariableSpec

SEGMENTS = ["pad", "text", "visual", "answer"]  # codes 0..3, as the store's `segment` coord names them
VARIABLES = {
    "segment_ids": VariableSpec(("example", "position"), "int8", -1),
    "input_ids": VariableSpec(("example", "position"), "int64", -1),
    "token": VariableSpec(("example", "position"), "str", ""),
}


def _tokens_store(path: Path, rows: dict[str, tuple[list[int], list[int]]]) -> TraceStore:
    """A store written by hand: per example (segment codes, input ids)."""
    width = max(len(s) for s, _ in rows.values())
    w = TraceStoreWriter(path, variables=VARIABLES, coords={"position": list(range(width)), "segment": SEGMENTS},
                         examples_per_chunk=2)
    for ex, (seg, ids) in rows.items():
        w.append([ex], {}, {"segment_ids": np.array([seg], np.int8), "input_ids": np.array([ids], np.int64),
                            "token": np.array([[f"t{i}" for i in ids]], dtype=object)})
    return w.close()


def test_string_variable_round_trips_and_pads(tmp_path: Path) -> None:
    st = _tokens_store(tmp_path / "a", {"e0": ([1, 2, 1], [5, 9, 6]), "e1": ([1, 2], [5, 9])})
    tok = st.dataset["token"].values
    assert [str(t) for t in tok[0]] == ["t5", "t9", "t6"]
    assert [str(t) for t in tok[1]] == ["t5", "t9", ""]
    np.testing.assert_array_equal(st.dataset["input_ids"].values[1], [5, 9, -1])


def test_check_comparable_names_the_first_differently_tokenised_example(tmp_path: Path) -> None:
    base = {"e0": ([1, 2, 2, 1], [5, 9, 9, 6]), "e1": ([1, 2, 1, 3], [5, 9, 7, 8]), "e2": ([1, 2, 1], [5, 9, 4])}
    a = _tokens_store(tmp_path / "a", base)
    # visual rows may carry other ids (placeholder vs expanded) and other counts: not compared
    same_text = {**base, "e0": ([1, 2, 1], [5, 1, 6]), "e3": ([1, 1], [1, 1])}
    a.check_comparable(_tokens_store(tmp_path / "b", same_text))
    # e1 differs at a text position, e2 in length (a prompt format change): e1 is named, it comes first
    other = {**base, "e1": ([1, 2, 1, 3], [5, 9, 7, 2]), "e2": ([1, 1, 2, 1], [3, 5, 9, 4])}
    with pytest.raises(IncomparableStoresError, match=r"example 'e1' was tokenised differently") as err:
        a.check_comparable(_tokens_store(tmp_path / "c", other))
    assert "\n" not in str(err.value) and "text token 2" in str(err.value)
    with pytest.raises(IncomparableStoresError, match=r"example 'e2'.*\(2 vs 3 text tokens"):
        a.check_comparable(_tokens_store(tmp_path / "d", {**base, "e2": ([1, 1, 2, 1], [3, 5, 9, 4])}))


def test_manifest_group_field(tmp_path: Path) -> None:
    from probe.data.manifest import read_manifest, write_manifest

    (tmp_path / "m.jsonl").write_text('{"id": "a", "prompt": "p", "group": 7}\n{"id": "b", "prompt": "p"}\n')
    a, b = read_manifest(tmp_path / "m.jsonl")
    assert (a.group, b.group) == ("7", None) and "group" not in a.labels
    assert [e.group for e in read_manifest(write_manifest([a, b], tmp_path / "n.jsonl"))] == ["7", None]


# ---------------------------------------------------------------- groups

def test_groups_round_trip_with_config_and_replace(tmp_path: Path) -> None:
    import dataclasses
    import json

    import xarray as xr

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        alpha: float = 0.05
        layers: tuple[int, ...] = (0, 2)

    st = _tokens_store(tmp_path / "s", {"e0": ([1], [5])})
    res = xr.Dataset({"score": (("layer",), np.array([0.5, 0.25]))}, coords={"layer": [0, 2]})
    st.write_group("analysis/attention", res, Cfg())
    st.write_group("eval", xr.Dataset({"correct": ("example", [True, False])}), {"seed": 3})
    assert st.groups() == ["analysis/attention", "eval"]
    back = st.read_group("analysis/attention").compute()
    xr.testing.assert_equal(back.drop_attrs(), res)
    assert json.loads(back.attrs["config"]) == {"alpha": 0.05, "layers": [0, 2]}
    # replacing is whole: the new content, nothing left of the old
    st.write_group("analysis/attention", res.isel(layer=[0]))
    assert st.read_group("analysis/attention").sizes["layer"] == 1
    assert not list(tmp_path.glob(".*"))  # no temporary folders left beside the store
    # the root dataset does not change, and the tree holds everything
    assert set(st.dataset.data_vars) == set(VARIABLES)
    assert set(st.tree()["capture"].data_vars) == set(VARIABLES)
    tree = st.tree()
    assert float(tree["analysis/attention"]["score"].values[0]) == 0.5
    with pytest.raises(Exception, match="no group 'vocab'.*groups: analysis/attention, eval"):
        st.read_group("vocab")
    for bad in ("token", "../x", "a/b/c", ".hidden"):
        with pytest.raises(Exception, match="group name"):
            st.write_group(bad, res)


def test_group_write_killed_midway_leaves_the_old_group(tmp_path: Path) -> None:
    """A crash while writing a replacement leaves the old group readable (the new one is built aside)."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    import xarray as xr

    st = _tokens_store(tmp_path / "s", {"e0": ([1], [5])})
    st.write_group("eval", xr.Dataset({"x": ("i", np.arange(3))}))
    child = textwrap.dedent(f"""
        import os, signal, numpy as np, xarray as xr
        from probe.store import TraceStore, groups
        orig = os.rename
        def die(a, b):
            if "writing-" in str(a):
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(a, b)
        groups.os.rename = die
        TraceStore.open({str(tmp_path / 's')!r}).write_group("eval", xr.Dataset({{"x": ("i", np.arange(50))}}))
    """)
    proc = subprocess.run([sys.executable, "-c", child], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL
    np.testing.assert_array_equal(st.read_group("eval")["x"].values, np.arange(3))
    st.write_group("eval", xr.Dataset({"x": ("i", np.arange(4))}))  # and the next write cleans up
    assert st.read_group("eval").sizes["i"] == 4 and not list(tmp_path.glob(".*"))


# ---------------------------------------------------------------- one writer per store (two real processes)

HOLDER = """
import sys, time, numpy as np
from probe.store import TraceStoreWriter, VariableSpec
w = TraceStoreWriter(sys.argv[1], variables={"x": VariableSpec(("example",), "float32", np.nan)}, examples_per_chunk=1)
w.append(["a"], {}, {"x": np.array([1.0], np.float32)})
print("holding", flush=True)
time.sleep(600)
"""


def test_second_writer_is_refused_and_a_dead_writers_lock_is_stale(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import xarray as xr

    from probe.store import StoreLockedError

    path = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "holding"
        variables = {"x": VariableSpec(("example",), "float32", np.nan)}
        with pytest.raises(StoreLockedError, match="being written by another process") as err:
            TraceStoreWriter(path, variables=variables, examples_per_chunk=1)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        with pytest.raises(StoreLockedError):
            TraceStoreWriter.resume(path)
        with pytest.raises(StoreLockedError):
            TraceStore.open(path).write_group("eval", xr.Dataset({"y": ("i", [1])}))
        assert TraceStore.open(path).example_ids == ["a"]  # readers are never refused
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: its lock is gone with it
    w = TraceStoreWriter.resume(path)
    w.append(["b"], {}, {"x": np.array([2.0], np.float32)})
    assert w.close().example_ids == ["a", "b"]
    # and a closed writer released it: a new one (in this process) gets it
    TraceStoreWriter.resume(path).close()


def test_store_package_imports_no_other_part_of_probe() -> None:
    import ast

    root = Path(__file__).resolve().parents[2] / "probe" / "store"
    for file in root.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("probe") or name.startswith("probe.store"), (file.name, name)


# ---------------------------------------------------------------- stores written before schema 2

def _as_schema_1(path: Path) -> None:
    """Rewrite a store's group attrs by hand as the schema-1 code wrote them (marker "1")."""
    import json

    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["visblind_store"] = "1"
    meta["attributes"]["schema_version"] = "1"
    (path / "zarr.json").write_text(json.dumps(meta))


def test_schema_1_store_opens_and_is_refused_for_writing_in_one_line(tmp_path: Path) -> None:
    import xarray as xr

    from probe.store import StoreMismatchError

    old = tmp_path / "v1.zarr"
    variables = {"seq_len": VariableSpec(("example",), "int32", -1)}
    w = TraceStoreWriter(old, variables=variables, example_coords=["lang"], attrs={"schema_version": "1"})
    w.append(["a", "b"], {"lang": ["en", "ko"]}, {"seq_len": np.array([3, 4], np.int32)})
    w.close()
    _as_schema_1(old)
    st = TraceStore.open(old)  # still opens and reads
    assert st.schema_version == "1" and list(st.dataset["seq_len"].values) == [3, 4]
    for write in (lambda: TraceStoreWriter.resume(old),
                  lambda: TraceStoreWriter(old, variables=variables, example_coords=["lang"], attrs={"schema_version": "1"})):
        with pytest.raises(StoreMismatchError, match="has store schema version 1; this visblind writes schema 2") as err:
            write()
        assert "\n" not in str(err.value)
    new = _tokens_store(tmp_path / "v2", {"e0": ([1], [5])})
    with pytest.raises(IncomparableStoresError, match="schema versions 2 and 1"):
        new.check_comparable(st)
    st.write_group("eval", xr.Dataset({"x": ("i", [1])}))  # groups can still be added to an old store
    assert st.groups() == ["eval"]
