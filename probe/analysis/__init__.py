"""Analyses of TraceStores: lazy (xarray + dask), never models."""

from probe.analysis.attention import (
    attention_collapse,
    changed_band,
    changed_layers,
    share_change,
    top_changed_heads,
    visual_share,
)
from probe.analysis.cka import (
    CKAMemoryError,
    StreamingLinearCKA,
    cka_matrix,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    minibatch_cka,
    pooled_cka,
    pooled_cka_with_null,
    rbf_cka,
    streaming_linear_cka,
)
from probe.analysis.drift import projector_drift, script_of, vocab_drift, vocab_neighbours
from probe.analysis.keyspace import KeyspaceConfig, compare_keyspace, keyspace_ood, ood_scores
from probe.analysis.mir import frechet_distance, modality_integration_rate
from probe.analysis.pipeline import AnalysisConfig, Skipped, analyze, compare_stores, intersect
from probe.analysis.registry import ANALYSES, Analysis
from probe.analysis.probes import ProbeConfig, compare_probes, linear_probes
from probe.analysis.sinks import find_sink_dims, sink_collapse, sink_mask, sink_shares, sink_summary
from probe.analysis.stats import (
    BootstrapConfig,
    bootstrap_mean_ci,
    bootstrap_relative_change,
    groups_of,
    rbf_mmd2,
    simultaneous_ci,
)

__all__ = [
    "ANALYSES", "Analysis", "AnalysisConfig", "changed_band", "changed_layers", "groups_of", "intersect",
    "pooled_cka_with_null", "simultaneous_ci", "BootstrapConfig", "CKAMemoryError", "KeyspaceConfig", "ProbeConfig", "Skipped", "StreamingLinearCKA",
    "analyze", "attention_collapse", "bootstrap_mean_ci", "bootstrap_relative_change", "cka_matrix",
    "compare_keyspace", "compare_probes", "compare_stores", "find_sink_dims", "frechet_distance", "hsic_biased",
    "hsic_unbiased", "keyspace_ood", "linear_cka", "linear_probes", "minibatch_cka", "modality_integration_rate",
    "ood_scores", "pooled_cka", "projector_drift", "rbf_cka", "rbf_mmd2", "script_of", "share_change", "sink_collapse",
    "sink_mask", "sink_shares", "sink_summary", "streaming_linear_cka", "top_changed_heads", "visual_share",
    "vocab_drift", "vocab_neighbours",
]
