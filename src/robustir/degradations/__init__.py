"""Differentiable degradation operators (noise, uniform blur and its adjoint), blur kernels, classical restorers."""

from robustir.degradations.functional import (AUTO_FFT_AREA, BOUNDARIES, add_gaussian_noise, blur, blur_adjoint,
                                              gaussian_noise_like, kernel_center, psf2otf)
from robustir.degradations.operators import Blur, Compose, GaussianNoise

__all__ = ["AUTO_FFT_AREA", "BOUNDARIES", "Blur", "Compose", "GaussianNoise", "add_gaussian_noise", "blur",
           "blur_adjoint", "gaussian_noise_like", "kernel_center", "psf2otf"]
