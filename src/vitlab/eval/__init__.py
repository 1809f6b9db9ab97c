"""vitlab.eval."""
