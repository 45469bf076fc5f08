"""visblind train package."""
