"""robustir.defenses."""
