"""What every view receives: ROOT, the chosen before/after store paths and the example filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ViewContext:
    """ROOT, resolved store paths (after may be None) and filters {coord: allowed values} (empty = all)."""

    root: Path
    before: Path
    after: Path | None = None
    filters: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.filters, tuple):
            raise ValueError("ViewContext.filters must be a tuple of (coord, values) pairs (hashable, for caching)")

    @property
    def filter_dict(self) -> dict[str, tuple[str, ...]]:
        return dict(self.filters)

    @property
    def stores(self) -> dict[str, Path]:
        """{"before": path, "after": path} (only before when no after is chosen)."""
        return {"before": self.before} | ({"after": self.after} if self.after is not None else {})
