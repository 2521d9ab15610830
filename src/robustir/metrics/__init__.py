"""robustir.metrics."""
