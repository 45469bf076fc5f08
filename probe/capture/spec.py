"""CaptureSpec: what a capture records, at which layers, in which dtype."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from probe.config import ConfigError, build, load

STORAGE_DTYPES = ("float16", "bfloat16", "float32")
RESID_KINDS = ("query", "pooled", "tokens")
_REPLACED_BY_LAYERS = ("kq_layers", "resid_layers")


@dataclass(frozen=True)
class CaptureSpec:
    """What to record. `layers`: the decoder layers every per-layer quantity is recorded at (None: all);
    the store's `layer` dim holds exactly these, for every per-layer variable.

    Attention statistics (`attn_share`, `attn_pattern`) are always float32; the other tensors
    are stored in `dtype`. Memory and disk grow with what is asked, not with T².
    `extra` names further recordables (probe.capture.recordables) that have no field of their own.
    """

    layers: tuple[int, ...] | None = None
    attn_share: bool = True
    attn_pattern: bool = True
    max_answer_tokens: int = 8
    keys: bool = False
    queries: bool = False
    resid: tuple[str, ...] = ("query", "pooled")
    projector: bool = True
    vision: bool = False
    vocab: bool = False  # the decoder's input embeddings + decoded vocabulary, once per store (group 'vocab')
    extra: tuple[str, ...] = ()
    dtype: str = "float16"
    blockwise_above: int = 1024  # sequences longer than this never hold a T×T tensor per layer
    block_size: int = 256
    batch_size: int = 4
    padding_side: str = "left"

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}")
        bad = [k for k in self.resid if k not in RESID_KINDS]
        if bad:
            raise ValueError(f"resid kinds must be among {RESID_KINDS}, got {bad}")
        sel = self.layers
        if sel is not None and (len(sel) == 0 or any(int(i) < 0 for i in sel)):
            raise ValueError(f"layers must be None or non-empty non-negative layer indices, got {sel}")
        if self.max_answer_tokens < 0:
            raise ValueError(f"max_answer_tokens must be >= 0, got {self.max_answer_tokens}")
        if self.block_size < 1 or self.blockwise_above < 1 or self.batch_size < 1:
            raise ValueError("block_size, blockwise_above and batch_size must be positive")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def resolve_layers(self, selection: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...]:
        """Concrete sorted layer indices for `selection` in a decoder of `num_layers` layers."""
        chosen = tuple(range(num_layers)) if selection is None else tuple(sorted(set(selection)))
        out_of_range = [i for i in chosen if i >= num_layers]
        if out_of_range:
            raise ValueError(f"layers {out_of_range} do not exist in a decoder of {num_layers} layers")
        return chosen

    @property
    def query_slots(self) -> tuple[str, ...]:
        """Names of the `query` coordinate: the last prompt token, then answer tokens."""
        return ("last_prompt",) + tuple(f"answer_{i}" for i in range(self.max_answer_tokens))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "CaptureSpec JSON") -> "CaptureSpec":
        """A spec from JSON text (a store's attribute); `source` names it in errors."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a CaptureSpec is a JSON object of fields, got a {type(raw).__name__}")
        return build(cls, raw, where=source, check=_no_replaced_fields)

    @classmethod
    def from_file(cls, path: str | Path) -> "CaptureSpec":
        """Read a spec from a JSON or YAML file (probe.config): a flat mapping of fields."""
        return load(cls, path, what="CaptureSpec", check=_no_replaced_fields)


def _no_replaced_fields(raw: dict) -> None:
    legacy = sorted(set(raw) & set(_REPLACED_BY_LAYERS))
    if legacy:
        raise ValueError(f"CaptureSpec fields {legacy} were replaced by one `layers` selection for every "
                          "per-layer quantity (store schema 2)")
