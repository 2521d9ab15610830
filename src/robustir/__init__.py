"""robustir: adversarial robustness of image-restoration networks (attacks, models, defenses, evaluation)."""

__version__ = "0.1.0"
