"""Classical non-learned non-blind deblurring (Wiener, Richardson-Lucy), registered as models like any network.

Both take the kernel of the forward model `y = Blur(k)(x)` (robustir's convolution convention, centre
`(kh // 2, kw // 2)`), are differentiable (so attacks and gradient checks treat them like networks) and work per sample
with `(N, 1, kh, kw)` kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.checks import check_image, check_positive
from robustir.degradations.functional import _check_boundary, as_kernel_batch, blur, blur_adjoint, psf2otf
from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model

# Best constant noise-to-signal ratio for sigma = 2.55/255 (1 %) on Set12 with the 8 Levin kernels, circular blur:
# mean PSNR 25.9 dB at 1e-2 (23.2 at 3e-3, 25.8 at 3e-2; the blurred inputs score 19.6).
DEFAULT_NSR = 1e-2


def _nsr_tensor(nsr: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """Validated positive NSR as `(N, 1, 1, 1)`."""
    if isinstance(nsr, Tensor):
        s = nsr.to(device=like.device, dtype=like.dtype).reshape(-1)
        s = s.expand(batch) if s.numel() == 1 else s
        if s.numel() != batch or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise RobustirError(f"nsr: expected one positive value or {batch} (one per image), got {nsr.tolist()}")
        return s.reshape(batch, 1, 1, 1)
    return like.new_full((batch, 1, 1, 1), check_positive(nsr, "nsr"))


def wiener_deconvolve(y: Tensor, kernel: Tensor, *, nsr: float | Tensor = DEFAULT_NSR, pad: bool = False) -> Tensor:
    """Wiener deconvolution with a constant noise-to-signal ratio: `X = conj(K) Y / (|K|^2 + nsr)` (FFT, circular).

    Args:
        y: blurred (noisy) images `(N, C, H, W)`.
        kernel: `(kh, kw)` or `(N, 1, kh, kw)` blur kernel(s) of the forward model.
        nsr: noise-to-signal power ratio (regularisation), a float or one per image `(N,)`; larger = smoother.
        pad: reflect-pad by the kernel size before deconvolving and crop after, which suppresses the ringing that
            non-periodic real images cause (leave off for circularly blurred inputs, where the inverse is exact).

    Returns:
        The restored images `(N, C, H, W)` (not clamped).
    """
    check_image(y, "blurred image", value_range=None)
    n, _, h, w = y.shape
    k = as_kernel_batch(kernel, n, y)
    s = _nsr_tensor(nsr, n, y)
    if pad:
        py, px = min(k.shape[-2], h - 1), min(k.shape[-1], w - 1)
        y = F.pad(y, (px, px, py, py), mode="reflect")
    otf = psf2otf(k, y.shape[-2:])
    x = torch.fft.irfft2(torch.fft.rfft2(y) * otf.conj() / (otf.abs().square() + s), s=y.shape[-2:])
    return x[..., py:py + h, px:px + w] if pad else x


def richardson_lucy(y: Tensor, kernel: Tensor, *, iterations: int = 30, boundary: str = "circular",
                    init: float | Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Richardson-Lucy deconvolution: `x <- x * A^T(y / A x) / A^T 1` (Richardson 1972, Lucy 1974).

    Args:
        y: blurred images `(N, C, H', W')` (negative noisy values are clamped to `eps`, RL assumes y >= 0).
        kernel: non-negative `(kh, kw)` or `(N, 1, kh, kw)` kernel(s).
        iterations: number of multiplicative updates (more = sharper and noisier).
        boundary: the blur boundary of the forward model (see `robustir.degradations.blur`; 'valid' restores the
            larger `(H' + kh - 1, W' + kw - 1)` image).
        init: starting estimate: None (`A^T y / A^T 1`, a positive image of the right size), a constant, or a tensor.
        eps: floor of the denominators.

    Returns:
        The restored images (non-negative, not clamped to 1).
    """
    check_image(y, "blurred image", value_range=None)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise RobustirError(f"iterations: expected a non-negative int, got {iterations!r}")
    eps = check_positive(eps, "eps")
    k = as_kernel_batch(kernel, y.shape[0], y)
    if bool((k < 0).any()):
        raise RobustirError("kernel: Richardson-Lucy needs a non-negative kernel")
    y = y.clamp_min(eps)
    norm = blur_adjoint(torch.ones_like(y), k, boundary).clamp_min(eps)
    if init is None:
        x = blur_adjoint(y, k, boundary) / norm
    elif isinstance(init, Tensor):
        x = init.to(y)
        if x.shape != norm.shape:
            raise RobustirError(f"init: expected shape {tuple(norm.shape)}, got {tuple(init.shape)}")
    else:
        x = torch.full_like(norm, check_positive(init, "init"))
    for _ in range(iterations):
        x = x * blur_adjoint(y / blur(x, k, boundary).clamp_min(eps), k, boundary) / norm
    return x


def _kernel_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    """Restorer adapter: classical methods take the forward-model kernel as it is."""
    return net(y, kernel)


@register_model("Wiener", task="deblur", description="Wiener deconvolution (FFT, circular, constant NSR), non-blind "
                "classical baseline", call=CallConvention(needs_kernel=True, adapter=_kernel_adapter))
class Wiener(nn.Module):
    """Non-blind Wiener deconvolution as a model: `Wiener(nsr=0.01)(y, kernel)`; no learnable parameters."""

    def __init__(self, *, nsr: float = DEFAULT_NSR, pad: bool = False) -> None:
        super().__init__()
        self.nsr = check_positive(nsr, "nsr")
        self.pad = bool(pad)

    def forward(self, y: Tensor, kernel: Tensor) -> Tensor:
        """Deconvolve `y` blurred by `kernel`."""
        return wiener_deconvolve(y, kernel, nsr=self.nsr, pad=self.pad)

    def extra_repr(self) -> str:
        """NSR and padding."""
        return f"nsr={self.nsr:g}, pad={self.pad}"


@register_model("RichardsonLucy", task="deblur", description="Richardson-Lucy deconvolution (multiplicative EM "
                "updates), non-blind classical baseline", call=CallConvention(needs_kernel=True,
                                                                              adapter=_kernel_adapter))
class RichardsonLucy(nn.Module):
    """Non-blind Richardson-Lucy deconvolution as a model: `RichardsonLucy(iterations=30)(y, kernel)`."""

    def __init__(self, *, iterations: int = 30, boundary: str = "circular") -> None:
        super().__init__()
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise RobustirError(f"iterations: expected a non-negative int, got {iterations!r}")
        if _check_boundary(boundary) == "valid":
            raise RobustirError("boundary: the RichardsonLucy model restores same-size images; 'valid' is available "
                                "in the function richardson_lucy")
        self.iterations = iterations
        self.boundary = boundary

    def forward(self, y: Tensor, kernel: Tensor) -> Tensor:
        """Deconvolve `y` blurred by `kernel`."""
        return richardson_lucy(y, kernel, iterations=self.iterations, boundary=self.boundary)

    def extra_repr(self) -> str:
        """Iterations and boundary."""
        return f"iterations={self.iterations}, boundary={self.boundary!r}"
