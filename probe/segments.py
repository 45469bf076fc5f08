"""Token-position roles: analyses speak in segments, never in raw index arithmetic."""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `import probe` (dask workers unpickling a store) stays light
    import torch


class Segment(IntEnum):
    """Role of one token position in a multimodal sequence."""

    PAD = 0
    TEXT = 1  # prompt text (system, user turn, chat-template scaffolding)
    VISUAL = 2  # image tokens fed to the decoder (projector outputs)
    ANSWER = 3  # the given answer (teacher-forced)
    IMAGE_START = 4  # image-begin marker, where the family has one
    IMAGE_END = 5  # image-end marker, where the family has one
    IMAGE_SEP = 6  # tile/row separators and tile-position text inside the image span (InternVL, Idefics3)

    @property
    def label(self) -> str:
        """Lower-case name used as the `segment` coordinate in stores."""
        return self.name.lower()


SEGMENT_NAMES: tuple[str, ...] = tuple(s.label for s in Segment)


def last_prompt_index(segments: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad, non-answer position per row.

    segments: [batch, seq] integer Segment codes -> [batch] long.
    """
    import torch

    is_prompt = (segments != Segment.PAD) & (segments != Segment.ANSWER)
    pos = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    return torch.where(is_prompt, pos, torch.full_like(pos, -1)).max(dim=1).values
