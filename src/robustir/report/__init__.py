"""robustir.report."""
