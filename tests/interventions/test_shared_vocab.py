"""One vocabulary across packages (probe.vocab): the independent unit and the `text` query source mean the same
thing to capture, evaluation and the experiment runner."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from interventions import Knockout
from interventions.runner import GridConfig, run_grid
from probe.analysis.stats import BootstrapConfig
from probe.capture import Capture, CaptureSpec
from probe.capture._attn_math import source_weights  # private: the capture's own source weights (moves with i21)
from probe.data.manifest import read_manifest
from probe.eval import cluster_share_ci, evaluate_dependence
from probe.segments import Segment
from probe.vocab import QUERY_SOURCES, query_mask

VISUAL = int(Segment.VISUAL)


def test_text_queries_are_the_same_positions_everywhere(pair, batch):
    """An attention edit on `text` queries edits exactly the positions capture's `text` source averages over."""
    segments = batch.segments.long()
    weights = source_weights(segments)  # [b, source, seq]
    for i, source in enumerate(QUERY_SOURCES):
        assert torch.equal(weights[:, i] > 0, query_mask(segments, [source])), source
    assert bool((segments == Segment.ANSWER).any())  # the batch has answers: the old `text` (text + answer) differs


def test_text_knockout_leaves_the_answer_source_alone(pair, batch):
    """Knocking out `text` queries zeroes capture's `text` visual share and leaves the `answer` source unchanged
    (the old `text` set also edited ANSWER queries)."""
    adapter = pair[0]
    cap = Capture(adapter, CaptureSpec(layers=(1,), resid=(), projector=False, dtype="float32"))

    def record(*edits):
        from contextlib import ExitStack

        with torch.no_grad(), ExitStack() as stack:
            stack.enter_context(cap.recording(batch))
            for iv in edits:
                iv.set_batch(batch)
                stack.enter_context(iv)
            with cap.envoy.trace(**batch.inputs):
                saved = cap.tap(batch)
            return cap.collect(batch, saved)

    plain = record()
    knocked = record(Knockout(adapter, layers=(1,), queries=("text",)))
    t, a = QUERY_SOURCES.index("text"), QUERY_SOURCES.index("answer")
    for before, after in zip(plain, knocked):
        assert np.all(before["attn_share"][0, :, t, VISUAL] > 0.01)
        np.testing.assert_allclose(after["attn_share"][0, :, t, VISUAL], 0.0, atol=1e-6)
        np.testing.assert_allclose(after["attn_share"][0, :, a], before["attn_share"][0, :, a], rtol=1e-5, atol=1e-6)


def test_eval_and_runner_cluster_on_the_same_units(pair, make_colour_manifest, tmp_path):
    """Two image files with the same pixels are two units (by path) for evaluation AND for the runner (which used
    a hash of the pixels); with a manifest group, both use the group."""
    path = make_colour_manifest(tmp_path / "data", 8)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    shutil.copy(tmp_path / "data" / "1.png", tmp_path / "data" / "1copy.png")
    rows.append(dict(rows[1], id="ex_copy", image="1copy.png"))  # same pixels, another file: another unit
    rows.append(dict(rows[2], id="ex_grouped", group="g2"))
    rows[2]["labels"] = dict(rows[2]["labels"], group="g2")  # the group given as a label counts too
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    examples = [e for e in read_manifest(path) if e.answer is not None]
    ev = evaluate_dependence(pair[0], examples, batch_size=8, progress=False)
    run = run_grid(GridConfig(model="unused", manifest=str(path), batch_size=8, chunk_examples=4), tmp_path / "run",
                   adapters=(pair[0], None), progress=False)
    assert list(run["example"].values) == list(ev["example"].values)
    units_eval = np.array([str(u) for u in ev["example_group"].values])
    units_run = np.array([str(u) for u in run["example_group"].values])
    np.testing.assert_array_equal(units_run, units_eval)
    assert units_eval[list(ev["example"].values).index("ex_copy")] != units_eval[list(ev["example"].values).index("ex001")]
    assert units_eval[list(ev["example"].values).index("ex_grouped")] == "g2"
    # the same hits clustered by each one's units: the same interval
    hits = run["correct"].sel(condition="none").values[None]
    cfg = BootstrapConfig(n_boot=200, seed=0)
    for a, b in zip(cluster_share_ci(hits, units_eval, cfg), cluster_share_ci(hits, units_run, cfg)):
        np.testing.assert_array_equal(a, b)
