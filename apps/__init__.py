"""visblind apps package."""
