"""visblind apps: the Streamlit dashboard over TraceStores (reads stores and results, never models)."""

from apps.launch import APP_FILE, launch, server_command
from apps.paths import PathRefused, discover, resolve_under_root

__all__ = ["APP_FILE", "PathRefused", "discover", "launch", "resolve_under_root", "server_command"]
