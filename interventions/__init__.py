"""visblind interventions package."""
