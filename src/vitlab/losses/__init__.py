"""vitlab.losses."""
