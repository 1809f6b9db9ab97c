"""vitlab.cli."""
