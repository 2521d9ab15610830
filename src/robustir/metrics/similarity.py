"""Mean absolute error on the 0-255 scale and zero-mean normalised cross-correlation, one value per image."""

from __future__ import annotations

import torch
from torch import Tensor

from robustir.metrics._prep import prepare


def mae(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Mean absolute error per image on the 0-255 scale (as the denoising paper reports it), `(N,)` float64."""
    a, b = prepare(x, y, data_range=data_range, crop_border=0, y_channel=False, quantize=False)
    return (a - b).abs().flatten(1).mean(dim=1) * 255.0


def ncc(x: Tensor, y: Tensor) -> Tensor:
    """Zero-mean normalised cross-correlation per image over all pixels and channels (METHODS.md 3.5), in [-1, 1].

    `NCC(a, b) = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 * sum (b - mean b)^2)`. It is undefined when
    either image is constant; robustir returns 0 (no correlation) then, so averages over a set stay finite.
    """
    a, b = prepare(x, y, data_range=1.0, crop_border=0, y_channel=False, quantize=False)
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = torch.sqrt(a.square().sum(dim=1) * b.square().sum(dim=1))
    num = (a * b).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
