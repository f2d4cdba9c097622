"""slim_rt.engines (see issue 4)."""
