"""robustir.analysis."""
