"""One recipe format for mitigation training: a frozen dataclass, YAML on disk, saved next to the checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from probe.config import load
from train.sft.config import parse_freeze

CONFIG_FILE = "mitigate.yaml"
RANKS = ("uniform", "modality")


@dataclass(frozen=True)
class ProjectorStage:
    """Task-loss training of the projector alone on `manifest` (staged recipe's first stage, post-hoc re-alignment)."""

    manifest: str
    steps: int = 50
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.lr > 0:
            raise ValueError(f"ProjectorStage: steps must be >= 1 and lr > 0, got steps={self.steps} lr={self.lr}")


@dataclass(frozen=True)
class MitigateConfig:
    """A mitigation recipe: L_total = L_task + λ1·L_drift + λ2·L_contrast + λ3·(1 + α·drift)·L_align.

    A weight of 0 switches its term off (plain LoRA is every weight 0). lora_r = 0 is full fine-tuning
    of whatever `freeze` leaves trainable. lora_ranks "modality" scales each decoder layer's rank by its
    visual attention share in `rank_store` (see train.mitigate.lora); projector_beta > 0 adds a LoRA on
    the projector at beta × lora_r. Paths are relative to the YAML file they were read from.
    """

    name: str
    model: str
    train_manifest: str
    seed: int = 0
    lr: float = 3e-4
    batch_size: int = 32
    max_steps: int = 150
    lora_r: int = 8
    lora_alpha: int = 16
    freeze: tuple[str, ...] = ("vision",)
    lora_ranks: str = "uniform"
    rank_store: str | None = None
    projector_beta: float = 0.0
    drift_weight: float = 0.0
    contrast_weight: float = 0.0
    contrast_margin: float = 1.0
    contrast_kl: float = 0.0
    align_weight: float = 0.0
    align_alpha: float = 0.0
    align_layers: tuple[int, ...] = ()
    align_hidden: int = 256
    anchor_manifest: str | None = None
    anchor_lang: str = "ko"
    anchors_per_concept: int = 4
    replay_manifest: str | None = None
    replay_fraction: float = 0.0
    pre: ProjectorStage | None = None
    post: ProjectorStage | None = None
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", parse_freeze(self.freeze))
        object.__setattr__(self, "align_layers", tuple(int(i) for i in self.align_layers))
        for name in ("pre", "post"):
            stage = getattr(self, name)
            if isinstance(stage, dict):
                object.__setattr__(self, name, ProjectorStage(**stage))
        where = f"MitigateConfig {self.name!r}"
        if not self.lr > 0 or self.batch_size < 1 or self.max_steps < 1:
            raise ValueError(f"{where}: lr must be > 0, batch_size and max_steps >= 1")
        if self.lora_r < 0 or self.lora_alpha <= 0:
            raise ValueError(f"{where}: lora_r must be >= 0 and lora_alpha > 0")
        if self.lora_ranks not in RANKS:
            raise ValueError(f"{where}: lora_ranks must be one of {RANKS}, got {self.lora_ranks!r}")
        if self.lora_ranks == "modality" and (self.rank_store is None or self.lora_r == 0):
            raise ValueError(f"{where}: lora_ranks 'modality' needs rank_store (a base store with attn_share) and lora_r > 0")
        if self.projector_beta and (self.projector_beta <= 1.0 or self.lora_r == 0):
            raise ValueError(f"{where}: projector_beta must be 0 (no projector LoRA) or > 1 with lora_r > 0, got {self.projector_beta}")
        for w in ("drift_weight", "contrast_weight", "contrast_kl", "align_weight", "align_alpha"):
            if getattr(self, w) < 0:
                raise ValueError(f"{where}: {w} must be >= 0, got {getattr(self, w)}")
        if not self.contrast_margin > 0:
            raise ValueError(f"{where}: contrast_margin must be > 0, got {self.contrast_margin}")
        if (self.drift_weight or self.align_alpha) and self.anchor_manifest is None:
            raise ValueError(f"{where}: drift_weight / align_alpha need anchor_manifest (image + concept-word examples)")
        if not 0.0 <= self.replay_fraction < 1.0 or (self.replay_fraction > 0) != (self.replay_manifest is not None):
            raise ValueError(f"{where}: replay_fraction in [0, 1) is set together with replay_manifest")
        if self.anchors_per_concept < 1 or self.align_hidden < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(f"{where}: anchors_per_concept, align_hidden, checkpoint_every, keep_checkpoints must be >= 1")
        if any(i < 1 for i in self.align_layers):
            raise ValueError(f"{where}: align_layers index hidden states after decoder layer i (>= 1), got {self.align_layers}")

    @property
    def uses_anchors(self) -> bool:
        """Whether the anchors are computed each step (drift loss, drift-scaled alignment, or drift logging)."""
        return self.anchor_manifest is not None

    def replace(self, **changes: Any) -> "MitigateConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def config_dict(config: MitigateConfig) -> dict[str, Any]:
    """Plain data (lists for tuples) for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(config))


def save_config(config: MitigateConfig, path: str | Path) -> Path:
    """Write `config` as YAML (a folder gets `mitigate.yaml`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    path.write_text(yaml.safe_dump(config_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def load_config(path: str | Path, *, resolve_paths: bool = True) -> MitigateConfig:
    """Read a YAML/JSON recipe (probe.config); unknown keys, wrong types and bad values raise one line naming the file."""
    return load(MitigateConfig, path, what="recipe", paths=_PATHS, resolve_paths=resolve_paths)


_PATHS = ("model", "train_manifest", "rank_store", "anchor_manifest", "replay_manifest", "pre.manifest", "post.manifest")
