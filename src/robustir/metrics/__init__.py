"""Full-reference image-quality metrics, batched, one value per image `(N,)`: PSNR, SSIM, MAE (0-255), NCC."""

from collections.abc import Callable

from torch import Tensor

from robustir.metrics._prep import quantize_uint8, rgb_to_y
from robustir.metrics.psnr import mse, psnr
from robustir.metrics.similarity import mae, ncc
from robustir.metrics.ssim import gaussian_window, ssim, ssim_map

# Name -> metric, for tables and the CLI; every metric maps (prediction, reference) to (N,).
METRICS: dict[str, Callable[..., Tensor]] = {"psnr": psnr, "ssim": ssim, "mae": mae, "ncc": ncc}
HIGHER_IS_BETTER: dict[str, bool] = {"psnr": True, "ssim": True, "mae": False, "ncc": True}
# Which metrics accept the BasicSR/KAIR convention keywords (crop_border, y_channel, quantize).
CONVENTION_METRICS = frozenset({"psnr", "ssim"})

__all__ = ["CONVENTION_METRICS", "HIGHER_IS_BETTER", "METRICS", "gaussian_window", "mae", "mse", "ncc", "psnr",
           "quantize_uint8", "rgb_to_y", "ssim", "ssim_map"]
