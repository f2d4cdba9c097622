"""slim_rt.export (see issue 4)."""
