"""Shared input handling of the full-reference metrics: validation and the BasicSR / KAIR scoring conventions."""

from __future__ import annotations

import torch
from torch import Tensor

from robustir.checks import check_image, check_positive, check_same_shape
from robustir.errors import RobustirError

# ITU-R BT.601 luma on the studio range, as BasicSR's `rgb2ycbcr(img, y_only=True)` for RGB in [0, 1]:
# Y = 16 + 65.481 R + 128.553 G + 24.966 B  (in [16, 235] on the 0-255 scale)
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma `(N, 1, H, W)` in [16/255, 235/255] of RGB images `(N, 3, H, W)` in [0, 1] (BasicSR's Y)."""
    w = x.new_tensor(_Y_WEIGHTS).reshape(1, 3, 1, 1)
    return ((x * w).sum(dim=1, keepdim=True) + _Y_OFFSET) / 255.0


def quantize_uint8(x: Tensor) -> Tensor:
    """KAIR's scoring convention: clamp to [0, 1], round to 8 bits (`np.uint8((x * 255).round())`), back to [0, 1]."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def prepare(x: Tensor, y: Tensor, *, data_range: float, crop_border: int, y_channel: bool,
            quantize: bool) -> tuple[Tensor, Tensor]:
    """Validate a prediction/reference pair and apply the conventions; returns float64 tensors in [0, 1] units."""
    check_image(x, "prediction", value_range=None)
    check_image(y, "reference", value_range=None)
    check_same_shape(x, y, "prediction", "reference")
    scale = check_positive(data_range, "data_range")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise RobustirError(f"crop_border: expected a non-negative int, got {crop_border!r}")
    h, w = x.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise RobustirError(f"crop_border: cropping {crop_border} pixels from each side of a {h}x{w} image leaves "
                            f"nothing")
    if y_channel and x.shape[1] not in (1, 3):
        raise RobustirError(f"y_channel: needs 1 or 3 channel images, got {x.shape[1]} channels")
    a, b = x.to(torch.float64) / scale, y.to(torch.float64) / scale
    if quantize:
        a, b = quantize_uint8(a), quantize_uint8(b)
    if crop_border:
        a = a[..., crop_border:h - crop_border, crop_border:w - crop_border]
        b = b[..., crop_border:h - crop_border, crop_border:w - crop_border]
    if y_channel and a.shape[1] == 3:  # gray images are scored as they are (BasicSR does the same)
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b
