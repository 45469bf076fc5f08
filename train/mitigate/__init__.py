"""Mitigation training: Visual Drift Compensation (VDC) and its baselines, one recipe format."""

from train.mitigate.config import MitigateConfig, ProjectorStage, load_config, save_config
from train.mitigate.loop import MitigateResult, StopTraining, mitigate

__all__ = ["MitigateConfig", "MitigateResult", "ProjectorStage", "StopTraining", "load_config", "mitigate", "save_config"]
