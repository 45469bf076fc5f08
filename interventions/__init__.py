"""Causal interventions on multimodal models: context managers over an adapter or a donor/recipient pair."""

from interventions.attention import VAR, AttentionEdit, Boost, Knockout, Temperature
from interventions.ablation import VisualTokenAblation, ablate_examples, diffusion_noise, visual_token_mean
from interventions.contrastive import ContrastiveDecoding, contrast_scores, contrastive_generate
from interventions.patching import ActivationPatch, patch_sweep, record_activations
from interventions.score import rank_answers, score_answers
from interventions.swap import ComponentSwap
from interventions.base import (
    Composed,
    Intervention,
    available_interventions,
    compose,
    intervention_class,
    make_intervention,
    register_intervention,
)

__all__ = [
    "VAR", "ActivationPatch", "ContrastiveDecoding", "contrast_scores", "contrastive_generate", "AttentionEdit", "Boost", "VisualTokenAblation", "ablate_examples", "diffusion_noise",
    "patch_sweep", "rank_answers", "record_activations", "score_answers", "visual_token_mean", "ComponentSwap", "Composed", "Intervention", "Knockout", "Temperature",
    "available_interventions", "compose", "intervention_class", "make_intervention", "register_intervention",
]
