"""One module per CLI command (see gradalign_fast/cli/__init__.py)."""
