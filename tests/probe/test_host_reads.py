"""Nothing visblind adds inside a forward reads a tensor value on the host (each such read is a GPU sync).

The guard (probe.capture.host_reads.HostReads) counts value reads (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`,
`nonzero`, boolean-mask indexing, F.one_hot's range check, host lists turned into device tensors, ...) between
the first and the last decoder layer of every forward, attributed to the innermost calling file outside torch.
Oracle: 0 reads from the project's files, for every tiny family; the guard itself is shown to count a read put
back into the recorder's path.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from probe.capture import Capture, CaptureSpec, _attn_math
from probe.capture.host_reads import HostReads
from probe.data.example import Example

FAMILIES = ("llava", "internvl", "qwen2_vl", "qwen2_5_vl", "smolvlm", "idefics3", "llava_next", "llava_onevision",
            "gemma3", "qwen3_vl", "internvl-tiled", "smolvlm-split", "idefics3-split")
# every recordable the capture can ask for: shares, rows, keys, queries, the three residual taps, projector, vision
EVERYTHING = CaptureSpec(attn_share=True, attn_pattern=True, keys=True, queries=True, max_answer_tokens=2,
                         resid=("query", "pooled", "tokens"), projector=True, vision=True)


def _examples() -> list[Example]:
    """Two prompts of different lengths (padding), one with an answer (ANSWER queries), one without."""
    img = Image.new("RGB", (40, 32), (200, 30, 30))
    return [Example("a", img, "What colour is the shape?", "red"),
            Example("b", Image.new("RGB", (32, 48), (30, 30, 200)), "Colour?", None)]


def test_every_family_captures_without_host_reads(tiny_adapter):
    """Capture of every recordable, fused shares path and blockwise rows: 0 reads of ours in every family's forward."""
    for family in FAMILIES:
        adapter = tiny_adapter(family)
        batch = adapter.build_inputs(_examples(), padding_side="right")
        for spec in (EVERYTHING, replace(EVERYTHING, blockwise_above=4, block_size=3)):
            cap = Capture(adapter, spec)
            with HostReads(adapter.decoder_layers) as reads:
                rows = cap.run(batch)
            assert reads.forwards == 1, family
            assert reads.ours == 0, f"{family}: {reads.report()}"
            assert len(rows) == 2 and "attn_share" in rows[0] and "hook_rot_q" in rows[0]


def test_guard_counts_a_read_put_back(tiny_adapter, monkeypatch):
    """The guard fails when one `.item()` is put back into the recorder's per-layer path (once per recorded layer)."""
    adapter = tiny_adapter("llava")
    batch = adapter.build_inputs(_examples(), padding_side="right")
    cap = Capture(adapter, EVERYTHING)
    shares_from_mass = _attn_math.shares_from_mass

    def with_a_read(mass, *args, **kwargs):
        mass.sum().item()  # what the old code did in effect: one value read per layer
        return shares_from_mass(mass, *args, **kwargs)

    monkeypatch.setattr(_attn_math, "shares_from_mass", with_a_read)
    with HostReads(adapter.decoder_layers) as reads:
        cap.run(batch)
    assert reads.ours == len(cap.layers) and "test_host_reads.py" in reads.report(), reads.report()


@pytest.mark.parametrize("read", ["nonzero", "bool_mask", "list_index", "one_hot", "cpu", "int"])
def test_guard_sees_each_kind_of_read(tiny_adapter, monkeypatch, read):
    """Each kind of host read, put into the path, is counted (and a read outside the decoder span is not)."""
    adapter = tiny_adapter("llava")
    batch = adapter.build_inputs(_examples(), padding_side="right")
    cap = Capture(adapter, CaptureSpec(attn_pattern=False, resid=()))
    kinds = {
        "nonzero": lambda m: m.nonzero(), "bool_mask": lambda m: m[m > 0], "list_index": lambda m: m[..., [0]],
        "one_hot": lambda m: torch.nn.functional.one_hot(torch.zeros(3, dtype=torch.long), 2),
        "cpu": lambda m: m.cpu(), "int": lambda m: int(m.flatten()[0]),
    }
    shares_from_mass = _attn_math.shares_from_mass

    def with_a_read(mass, *args, **kwargs):
        kinds[read](mass)
        return shares_from_mass(mass, *args, **kwargs)

    monkeypatch.setattr(_attn_math, "shares_from_mass", with_a_read)
    with HostReads(adapter.decoder_layers) as reads:
        cap.run(batch)
        kinds[read](torch.ones(2))  # after the forward: outside the span
    assert reads.ours == len(cap.layers), reads.report()


def test_eval_ranking_reads_nothing_inside_forwards(tiny_adapter):
    """`probe eval` ranking (shared prompt + KV-cache continuation, or full forwards): 0 reads of ours per forward."""
    from probe.eval.predict import candidate_logprobs

    exs = [replace(ex, answer=None) for ex in _examples()]
    for family in FAMILIES:
        adapter = tiny_adapter(family)
        with HostReads(adapter.decoder_layers) as reads, torch.no_grad():
            candidate_logprobs(adapter, exs, [["red", "blue"], ["green", "blue", "red"]], batch_size=4)
        assert reads.forwards >= 2 and reads.ours == 0, f"{family}: {reads.report()}"
