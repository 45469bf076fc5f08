"""Every attention edit, activation patching and the visual-token ablation read nothing on the host in a forward.

Oracle: probe.capture.host_reads.HostReads counts 0 host reads of tensor values from the project's files between
the first and the last decoder layer of each forward, for every tiny family (see tests/probe/test_host_reads.py,
which also shows the guard counting a read put back into the path). Edits run on the text queries too, so
rows with different numbers of edited queries (padding slots) are exercised.
"""

from __future__ import annotations

import torch
from PIL import Image

from interventions import VAR, AdaptVis, Boost, Knockout, Temperature
from interventions.ablation import VisualTokenAblation
from interventions.patching import ActivationPatch, record_activations
from probe.capture import Capture, CaptureSpec
from probe.capture.host_reads import HostReads
from probe.data.example import Example

FAMILIES = ("llava", "internvl", "qwen2_vl", "qwen2_5_vl", "smolvlm", "idefics3", "llava_next", "llava_onevision",
            "gemma3", "qwen3_vl", "internvl-tiled", "smolvlm-split", "idefics3-split")


def _batch(adapter):
    img = Image.new("RGB", (40, 32), (200, 30, 30))
    exs = [Example("a", img, "What colour is the shape?", "red"), Example("b", img, "Colour?", "blue")]
    return adapter.build_inputs(exs, padding_side="right")


def _edits(adapter, batch):
    queries = ("last_prompt", "answer", "text")
    sinks = torch.zeros_like(batch.segments, dtype=torch.bool)
    sinks[:, 0] = True
    given = VAR(adapter, queries=queries)
    given.set_sinks(sinks)
    return {
        "boost": Boost(adapter, alpha=0.5, layers=0, queries=queries),
        "boost_heads": Boost(adapter, alpha=0.5, layers=0, heads=[0], queries=("last_prompt",)),
        "temperature": Temperature(adapter, scale=0.7, layers=0, queries=queries),
        "adaptvis": AdaptVis(adapter, layers=0, queries=queries),
        "knockout": Knockout(adapter, queries=queries),
        "var_detected": VAR(adapter, sink_dims=[0, 1], tau=0.5, queries=queries),
        "var_given": given,
        "var_heads": VAR(adapter, sink_dims=[0], tau=0.5, image_heads={0: [0, 1]}, queries=queries),
    }


def test_every_edit_reads_nothing_in_every_family(tiny_adapter):
    """Each edit alone, and boost under the capture recorder (widened values through the edit): 0 reads of ours."""
    for family in FAMILIES:
        adapter = tiny_adapter(family)
        batch = _batch(adapter)
        for name, edit in _edits(adapter, batch).items():
            with HostReads(adapter.decoder_layers) as reads, torch.no_grad(), edit:
                edit.set_batch(batch)
                adapter.model(**batch.inputs)
            assert reads.forwards == edit.forward_passes and reads.ours == 0, f"{family} {name}: {reads.report()}"
        boost = Boost(adapter, alpha=0.5, layers=0, queries=("last_prompt", "answer", "text"))
        cap = Capture(adapter, CaptureSpec(attn_pattern=True))
        with HostReads(adapter.decoder_layers) as reads, boost:
            boost.set_batch(batch)
            cap.run(batch)
        assert reads.ours == 0, f"{family} boost + capture: {reads.report()}"


def test_patching_and_ablation_read_nothing(tiny_adapter):
    """Activation patching (recording and patching every site) and the visual-token ablation: 0 reads of ours."""
    for family in FAMILIES:
        adapter = tiny_adapter(family)
        batch = _batch(adapter)
        layers = list(range(adapter.num_layers))
        keys = [(site, i) for site in ("resid", "attn", "mlp") for i in layers] + [("projector", None)]
        with HostReads(adapter.decoder_layers) as reads:
            acts, _ = record_activations(adapter, batch, keys)
        assert reads.ours == 0, f"{family} record: {reads.report()}"
        for site in ("resid", "attn", "mlp"):
            for segment in ("visual", "text", "last_prompt", "all"):
                patch = ActivationPatch(adapter, acts, site, layers, segment)
                with HostReads(adapter.decoder_layers) as reads, torch.no_grad(), patch:
                    patch.set_batch(batch)
                    adapter.model(**batch.inputs)
                assert reads.forwards == 1 and reads.ours == 0, f"{family} patch {site}/{segment}: {reads.report()}"
        for mode in ("zero", "noise"):
            ablation = VisualTokenAblation(adapter, mode, fraction=0.5)
            ablation.set_batch(batch)  # the edit needs the batch's token roles (the runner always gives them)
            with HostReads(adapter.decoder_layers) as reads, torch.no_grad(), ablation:
                adapter.model(**batch.inputs)
            assert reads.forwards == 1 and reads.ours == 0, f"{family} ablation {mode}: {reads.report()}"
