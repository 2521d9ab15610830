"""robustir.attacks."""
