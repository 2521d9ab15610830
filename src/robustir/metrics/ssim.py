"""Structural similarity (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004), one value per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.errors import RobustirError
from robustir.metrics._prep import prepare

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian weights `(size,)` centred on the middle tap."""
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: Tensor, w: Tensor) -> Tensor:
    """Separable Gaussian filter per channel, keeping only windows that lie fully inside the image."""
    c = x.shape[1]
    x = F.conv2d(x, w.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, w.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """The local SSIM map `(N, C, H - 10, W - 10)` of float64 images in [0, 1] units (valid windows only)."""
    h, w = x.shape[-2:]
    if h < WINDOW or w < WINDOW:
        raise RobustirError(f"ssim: images must be at least {WINDOW}x{WINDOW} after cropping, got {h}x{w}")
    win = gaussian_window(dtype=x.dtype, device=x.device)
    mu_x, mu_y = _filter_valid(x, win), _filter_valid(y, win)
    # population (not sample) covariances, as Wang et al. and skimage's use_sample_covariance=False
    var_x = _filter_valid(x * x, win) - mu_x.square()
    var_y = _filter_valid(y * y, win) - mu_y.square()
    cov = _filter_valid(x * y, win) - mu_x * mu_y
    c1, c2 = K1 ** 2, K2 ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0, crop_border: int = 0, y_channel: bool = False,
         quantize: bool = False) -> Tensor:
    """Mean SSIM per image with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03.

    Equals scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=..., channel_axis=...)`: only windows fully inside the image are averaged, and colour images average
    the per-channel SSIM. Options as in `psnr` (BasicSR crop / Y channel, KAIR 8-bit rounding).

    Returns:
        `(N,)` float64 in [-1, 1]; identical images give exactly 1.
    """
    a, b = prepare(x, y, data_range=data_range, crop_border=crop_border, y_channel=y_channel, quantize=quantize)
    return ssim_map(a, b).flatten(1).mean(dim=1)
