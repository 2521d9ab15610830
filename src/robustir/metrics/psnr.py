"""Peak signal-to-noise ratio, one value per image."""

from __future__ import annotations

import torch
from torch import Tensor

from robustir.metrics._prep import prepare


def mse(x: Tensor, y: Tensor, *, data_range: float = 1.0, crop_border: int = 0, y_channel: bool = False,
        quantize: bool = False) -> Tensor:
    """Mean squared error per image `(N,)` (float64) in units of `data_range`, with the PSNR conventions."""
    a, b = prepare(x, y, data_range=data_range, crop_border=crop_border, y_channel=y_channel, quantize=quantize)
    return (a - b).square().flatten(1).mean(dim=1)


def psnr(x: Tensor, y: Tensor, *, data_range: float = 1.0, crop_border: int = 0, y_channel: bool = False,
         quantize: bool = False) -> Tensor:
    """PSNR in dB per image: `10 log10(data_range^2 / MSE)` over all channels and pixels.

    Args:
        x: prediction `(N, C, H, W)`.
        y: reference, same shape.
        data_range: the peak value (1 for [0,1] images, 255 for 0-255 images).
        crop_border: pixels removed from every side before scoring (BasicSR's `crop_border`).
        y_channel: score the BT.601 luma of RGB images (BasicSR's `test_y_channel`); gray images are unchanged.
        quantize: round both images to 8 bits first (KAIR's uint8 evaluation).

    Returns:
        `(N,)` float64. Identical images give `inf` (MSE 0), never an error or NaN.
    """
    err = mse(x, y, data_range=data_range, crop_border=crop_border, y_channel=y_channel, quantize=quantize)
    return torch.where(err > 0, -10.0 * torch.log10(err.clamp_min(1e-300)), torch.full_like(err, float("inf")))
