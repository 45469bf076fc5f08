"""Causal interventions on multimodal models: context managers over an adapter or a donor/recipient pair.

Every intervention is a context manager (`Intervention`); they compose with each other (`compose`) and with
`probe.capture.Capture` (enter the capture's `recording(batch)` first, so the recorder sees the edited attention).
Edits that depend on token roles take the batch through `set_batch(batch)`. A no-op setting is bit-identical.
The experiment runner sweeps a grid of them over a manifest (`run_grid`, CLI `interventions run GRID.yaml`).
"""

from interventions.ablation import VisualTokenAblation, ablate_examples, diffusion_noise, visual_token_mean
from interventions.attention import VAR, AdaptVis, AttentionEdit, Boost, Knockout, Temperature, image_centric_heads
from interventions.base import (
    Composed,
    Intervention,
    available_interventions,
    compose,
    intervention_class,
    make_intervention,
    register_intervention,
)
from interventions.contrastive import ContrastiveDecoding, contrast_scores, contrastive_generate
from interventions.patching import ActivationPatch, patch_sweep, record_activations
from interventions.runner import GridConfig, run_grid, summarise
from interventions.score import rank_answers, score_answers
from interventions.swap import ComponentSwap

__all__ = [
    "VAR", "ActivationPatch", "AdaptVis", "AttentionEdit", "Boost", "ComponentSwap", "Composed", "ContrastiveDecoding", "GridConfig",
    "Intervention", "Knockout", "Temperature", "VisualTokenAblation", "ablate_examples", "available_interventions",
    "compose", "contrast_scores", "contrastive_generate", "diffusion_noise", "image_centric_heads", "intervention_class",
    "make_intervention", "patch_sweep", "rank_answers", "record_activations", "register_intervention", "run_grid",
    "score_answers", "summarise", "visual_token_mean",
]
