"""Painting per-visual-token values onto the image: moved to probe.report.paint (the report paints too); names kept here."""

from probe.report.paint import display_size, paint

__all__ = ["display_size", "paint"]
