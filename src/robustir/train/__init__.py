"""robustir.train."""
