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
