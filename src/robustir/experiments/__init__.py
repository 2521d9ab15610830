"""robustir.experiments."""
