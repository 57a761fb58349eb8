"""One module per CLI command (see gradalign_fast/cli.py)."""
