"""visblind probe: capture, stores, analyses and reports."""
