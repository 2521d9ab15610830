"""robustir.degradations."""
