"""Causal interventions on multimodal models: context managers over an adapter or a donor/recipient pair."""

from interventions.attention import VAR, AttentionEdit, Boost, Knockout, Temperature
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
    "VAR", "AttentionEdit", "Boost", "ComponentSwap", "Composed", "Intervention", "Knockout", "Temperature",
    "available_interventions", "compose", "intervention_class", "make_intervention", "register_intervention",
]
