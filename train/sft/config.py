"""SFT configuration: a frozen dataclass validated on construction."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPONENTS: tuple[str, ...] = ("vision", "projector", "decoder", "embeddings")
_LAYER_RE = re.compile(r"^layers?(\d+)(?:-(\d+))?$")


def parse_freeze(items: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Normalise a freeze spec ('vision,projector,layer0-1') into a validated tuple of tokens."""
    if isinstance(items, str):
        items = [t for t in items.split(",")]
    out = tuple(t.strip().lower() for t in items if t.strip())
    for tok in out:
        if tok not in COMPONENTS and not _LAYER_RE.match(tok):
            raise ValueError(f"freeze: unknown component {tok!r} (use {', '.join(COMPONENTS)} or layerI / layerI-J)")
    return out


def frozen_layer_indices(freeze: tuple[str, ...]) -> set[int]:
    """Decoder-layer indices named by 'layerI' / 'layerI-J' tokens."""
    idx: set[int] = set()
    for tok in freeze:
        m = _LAYER_RE.match(tok)
        if m:
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ValueError(f"freeze: empty layer range {tok!r}")
            idx.update(range(lo, hi + 1))
    return idx


@dataclass(frozen=True)
class SFTConfig:
    """Hyper-parameters of one supervised fine-tuning run.

    lora_r = 0 means full fine-tuning; freeze names components kept fixed
    (vision, projector, decoder, embeddings, layerI, layerI-J).
    """

    lr: float = 1e-3
    batch_size: int = 32
    max_steps: int | None = None
    epochs: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    freeze: tuple[str, ...] = ()
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    padding_side: str = "right"
    device: str = "auto"
    threads: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"SFTConfig.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"SFTConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"SFTConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if not self.epochs > 0:
            raise ValueError(f"SFTConfig.epochs must be > 0, got {self.epochs}")
        if self.lora_r < 0:
            raise ValueError(f"SFTConfig.lora_r must be >= 0, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"SFTConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ValueError("SFTConfig.checkpoint_every, keep_checkpoints and log_every must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError(f"SFTConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"SFTConfig.padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"SFTConfig.max_seconds must be > 0 or None, got {self.max_seconds}")
        object.__setattr__(self, "freeze", parse_freeze(self.freeze))
        object.__setattr__(self, "betas", tuple(self.betas))


# the CLI's defaults where they differ from the dataclass's (kept from before `--config` existed)
CLI_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "batch_size": 8}


def cli_config(path: str | Path | None, flags: dict[str, Any]) -> SFTConfig:
    """`train sft`'s config: the CLI defaults, then the --config file's fields (YAML/JSON), then the flags given."""
    from probe.config import ConfigError, build, read_config

    if path is None:
        base = SFTConfig(**CLI_DEFAULTS)
    else:
        cfg = read_config(path, what="SFT config")
        base = build(SFTConfig, {**CLI_DEFAULTS, **cfg.data}, where=cfg.where, what="SFT config")
    try:
        return dataclasses.replace(base, **flags)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"train sft: {err}") from None
