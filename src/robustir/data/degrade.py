"""Ready-made degradations for `DegradedImages`: `fn(x (1, C, H, W), generator) -> Tensor | dict`.

Randomness comes only from the per-item generator, so an item is the same whatever order it is read in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robustir.checks import check_positive
from robustir.errors import RobustirError

DegradeFn = Callable[[Tensor, torch.Generator], "Tensor | dict[str, Tensor]"]

__all__ = ["DegradeFn", "blind_noise", "blur_noise", "motion_blur_noise", "noise"]


def noise(sigma: float, *, clip: bool = False) -> DegradeFn:
    """Additive white Gaussian noise of level `sigma` (0-255 scale); returns `{"input", "sigma"}`."""
    from robustir.degradations import add_gaussian_noise

    s = check_positive(sigma, "sigma", allow_zero=True)

    def degrade(x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        y = add_gaussian_noise(x, s, generator=generator, clip=clip)
        return {"input": y, "sigma": torch.tensor(s, dtype=x.dtype)}

    return degrade


def blind_noise(sigma_min: float, sigma_max: float, *, clip: bool = False) -> DegradeFn:
    """Gaussian noise with a level drawn uniformly from [sigma_min, sigma_max] per item (blind denoisers)."""
    from robustir.degradations import add_gaussian_noise

    lo, hi = check_positive(sigma_min, "sigma_min", allow_zero=True), check_positive(sigma_max, "sigma_max")
    if lo > hi:
        raise RobustirError(f"noise range: sigma_min {lo:g} is larger than sigma_max {hi:g}")

    def degrade(x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        s = lo + (hi - lo) * float(torch.rand((), generator=generator))
        return {"input": add_gaussian_noise(x, s, generator=generator, clip=clip),
                "sigma": torch.tensor(s, dtype=x.dtype)}

    return degrade


def blur_then_noise(x: Tensor, kernel: Tensor | None, sigma: float, *, generator: torch.Generator,
                    boundary: str = "circular", clip: bool = False) -> Tensor:
    """y = clip?(x * kernel + n), n ~ N(0, (sigma/255)^2) from `generator`; no blur without a kernel, no noise at 0."""
    from robustir.degradations import add_gaussian_noise, blur

    y = x if kernel is None else blur(x, kernel, boundary=boundary)
    if sigma > 0:
        return add_gaussian_noise(y, sigma, generator=generator, clip=clip)
    return y.clamp(0, 1) if clip else y


def blur_noise(kernel: Tensor, sigma: float = 0.0, *, boundary: str = "circular", clip: bool = False) -> DegradeFn:
    """Uniform blur with a fixed kernel, then Gaussian noise (`sigma` on the 0-255 scale); returns input/kernel/sigma."""
    s = check_positive(sigma, "sigma", allow_zero=True)
    if not isinstance(kernel, Tensor) or kernel.ndim != 2:
        raise RobustirError(f"kernel: expected a (kh, kw) tensor, got "
                            f"{tuple(kernel.shape) if isinstance(kernel, Tensor) else type(kernel).__name__}")
    k = kernel.detach().float()

    def degrade(x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        y = blur_then_noise(x, k.to(x.dtype), s, generator=generator, boundary=boundary, clip=clip)
        return {"input": y, "kernel": k, "sigma": torch.tensor(s, dtype=x.dtype)}

    return degrade


def motion_blur_noise(size: int, *, intensity: float = 0.5, sigma: float = 0.0, boundary: str = "circular",
                      clip: bool = False) -> DegradeFn:
    """A fresh random camera-shake kernel per item (`robustir.degradations.motion_kernel`), blur, then noise."""
    from robustir.degradations import motion_kernel

    s = check_positive(sigma, "sigma", allow_zero=True)

    def degrade(x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        k = motion_kernel(size, intensity=intensity, generator=generator).to(x.dtype)
        y = blur_then_noise(x, k, s, generator=generator, boundary=boundary, clip=clip)
        return {"input": y, "kernel": k, "sigma": torch.tensor(s, dtype=x.dtype)}

    return degrade
