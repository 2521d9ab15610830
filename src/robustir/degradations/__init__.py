"""Differentiable degradation operators (noise, uniform blur and its adjoint), blur kernels, classical restorers."""

from robustir.degradations.functional import (AUTO_FFT_AREA, BOUNDARIES, add_gaussian_noise, blur, blur_adjoint,
                                              gaussian_noise_like, kernel_center, psf2otf)
from robustir.degradations.kernels import (LEVIN_SIZES, gaussian_kernel, levin_kernels, load_kernels, resize_kernel,
                                           validate_kernel)
from robustir.degradations.motion import motion_kernel, motion_kernels, motion_trajectory
from robustir.degradations.operators import Blur, Compose, GaussianNoise

# The classical restorers register themselves as models, which imports robustir.models (and every network); they are
# loaded on first access so that `import robustir.degradations` stays light and free of import cycles.
_CLASSICAL = ("DEFAULT_NSR", "RichardsonLucy", "Wiener", "richardson_lucy", "wiener_deconvolve")


def __getattr__(name: str) -> object:
    """Lazily provide the classical restorers (PEP 562)."""
    if name in _CLASSICAL:
        from robustir.degradations import classical

        return getattr(classical, name)
    raise AttributeError(f"module 'robustir.degradations' has no attribute {name!r}")


__all__ = ["AUTO_FFT_AREA", "BOUNDARIES", "Blur", "Compose", "DEFAULT_NSR", "GaussianNoise", "LEVIN_SIZES",
           "RichardsonLucy", "Wiener", "add_gaussian_noise", "blur", "blur_adjoint", "gaussian_kernel",
           "gaussian_noise_like", "kernel_center", "levin_kernels", "load_kernels", "motion_kernel", "motion_kernels",
           "motion_trajectory", "psf2otf", "resize_kernel", "richardson_lucy", "validate_kernel", "wiener_deconvolve"]
