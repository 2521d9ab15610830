"""Differentiable degradation operators (noise, uniform blur and its adjoint), blur kernels, classical restorers."""

from robustir.degradations.functional import (AUTO_FFT_AREA, BOUNDARIES, add_gaussian_noise, blur, blur_adjoint,
                                              gaussian_noise_like, kernel_center, psf2otf)
from robustir.degradations.kernels import LEVIN_SIZES, levin_kernels, load_kernels, resize_kernel, validate_kernel
from robustir.degradations.motion import motion_kernel, motion_kernels, motion_trajectory
from robustir.degradations.operators import Blur, Compose, GaussianNoise

__all__ = ["AUTO_FFT_AREA", "BOUNDARIES", "Blur", "Compose", "GaussianNoise", "LEVIN_SIZES", "add_gaussian_noise",
           "blur", "blur_adjoint", "gaussian_noise_like", "kernel_center", "levin_kernels", "load_kernels",
           "motion_kernel", "motion_kernels", "motion_trajectory", "psf2otf", "resize_kernel", "validate_kernel"]
