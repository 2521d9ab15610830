"""DPIR: plug-and-play half-quadratic splitting with the DRUNet denoiser prior (Zhang et al., TPAMI 2021).

Follows cszn/DPIR `main_dpir_deblur.py` (METHODS.md section 5): for min_x 1/2||y - k*x||^2 + lambda Phi(x), start from
z_0 = y and alternate K times

1. data step (closed form, circular boundary):  x_i = F^-1[(conj(K) Y + alpha_i F(z_{i-1})) / (|K|^2 + alpha_i)],
2. prior step: z_i = DRUNet([x_i, sigma_i]),

with sigma_i log-spaced from 49/255 down to the image noise level and alpha_i = lambda sigma^2 / sigma_i^2
(lambda = 0.23, sigma = max(sigma_n, 0.255/255)). With `x8` the i-th prior step runs on the dihedral transform
(i mod 8) of x_i and undoes it afterwards. Without a kernel, DPIR is one DRUNet pass (its denoising use, x8 off).

The DRUNet parameters are stored under the same names as in `UNetRes` (the released `drunet_gray.pth` loads strictly).
Differences from the script: the prior step replicate-pads the whole image to a multiple of `modulo` instead of
splitting images larger than 256x256 into four overlapping tiles (a memory optimisation that changes results only near
the tile seams), and sigma_n = 0 is floored to 0.255/255 for the end of the schedule as well (the script would take
log10(0)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.checks import check_positive
from robustir.errors import RobustirError
from robustir.models.drunet import UNetRes, drunet_input
from robustir.models.registry import CallConvention, register_model, register_preset

SIGMA_FLOOR = 0.255 / 255  # DPIR's lower bound on the noise level used in the weights


def hqs_schedule(sigma: Tensor, *, iter_num: int = 8, sigma1: float = 49 / 255, lam: float = 0.23
                 ) -> tuple[Tensor, Tensor]:
    """DPIR's schedule for per-image noise levels `(N,)`: prior levels sigma_i `(N, K)` and data weights alpha_i.

    sigma_i is geometric from `sigma1` to max(sigma_n, 0.255/255) (`np.logspace` in the script); alpha_i =
    lam * max(sigma_n, 0.255/255)^2 / sigma_i^2.
    """
    s = sigma.clamp_min(SIGMA_FLOOR).to(torch.float64)
    t = torch.linspace(0.0, 1.0, iter_num, dtype=torch.float64, device=sigma.device) if iter_num > 1 else \
        torch.zeros(1, dtype=torch.float64, device=sigma.device)
    log_s = math.log10(sigma1) + t[None, :] * (torch.log10(s)[:, None] - math.log10(sigma1))
    # the script rounds the schedule to float32 (np.float32) before using it
    sigmas = (10.0 ** log_s).to(torch.float32)
    alphas = lam * s[:, None] ** 2 / sigmas.to(torch.float64) ** 2
    return sigmas.to(sigma.dtype), alphas.to(sigma.dtype)


def _otf(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    from robustir.degradations.functional import psf2otf

    return psf2otf(kernel, size)


def hqs_data_step(z: Tensor, y_hat: Tensor, otf: Tensor, alpha: Tensor) -> Tensor:
    """Closed-form x = argmin ||y - k*x||^2 + alpha ||x - z||^2 under circular boundary (rFFT domain inputs)."""
    h, w = z.shape[-2:]
    a = alpha.reshape(-1, 1, 1, 1)
    num = otf.conj() * y_hat + a * torch.fft.rfft2(z)
    return torch.fft.irfft2(num / (otf.abs().square() + a), s=(h, w))


def dihedral(x: Tensor, mode: int) -> Tensor:
    """KAIR's `augment_img_tensor4`: the 8 flips/rotations of the last two dims."""
    if mode == 0:
        return x
    if mode == 1:
        return x.rot90(1, (2, 3)).flip(2)
    if mode == 2:
        return x.flip(2)
    if mode == 3:
        return x.rot90(3, (2, 3))
    if mode == 4:
        return x.rot90(2, (2, 3)).flip(2)
    if mode == 5:
        return x.rot90(1, (2, 3))
    if mode == 6:
        return x.rot90(2, (2, 3))
    return x.rot90(3, (2, 3)).flip(2)


def dihedral_inverse(x: Tensor, mode: int) -> Tensor:
    """Inverse of `dihedral`: modes 3 and 5 invert each other, the others are involutions."""
    return dihedral(x, 8 - mode if mode in (3, 5) else mode)


def _dpir_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    assert sigma is not None  # the restorer enforces needs_sigma
    return net(y, sigma, kernel)


@register_model("DPIR", task="deblur",
                description="DPIR: HQS plug-and-play with the DRUNet prior (non-blind deblurring with kernel=; "
                            "one DRUNet pass without a kernel)",
                call=CallConvention(needs_sigma=True, adapter=_dpir_adapter),
                test_spec={"type": "DPIR", "in_nc": 2, "out_nc": 1, "nc": [4, 8, 8, 16], "nb": 1, "iter_num": 2})
class DPIR(UNetRes):
    """DRUNet (same parameters and names as `UNetRes`) driven by DPIR's HQS loop: `forward(y, sigma, kernel=None)`.

    Args:
        in_nc, out_nc, nc, nb, act_mode, downsample_mode, upsample_mode, bias: the DRUNet (`UNetRes`) configuration;
            defaults are the released bias-free gray model.
        iter_num: HQS iterations K (8 for deblurring).
        sigma1: first prior noise level (49/255).
        lam: the trade-off lambda in alpha_i = lam sigma^2 / sigma_i^2 (0.23).
        x8: dihedral transform (i mod 8) around the i-th prior step (the deblurring script uses True).
        modulo: the prior step replicate-pads to a multiple of this and crops back (16 in the script; >= 8).
    """

    def __init__(self, *, in_nc: int = 2, out_nc: int = 1, nc: list[int] | tuple[int, ...] = (64, 128, 256, 512),
                 nb: int = 4, act_mode: str = "R", downsample_mode: str = "strideconv",
                 upsample_mode: str = "convtranspose", bias: bool = False, iter_num: int = 8,
                 sigma1: float = 49 / 255, lam: float = 0.23, x8: bool = True, modulo: int = 16) -> None:
        super().__init__(in_nc=in_nc, out_nc=out_nc, nc=nc, nb=nb, act_mode=act_mode,
                         downsample_mode=downsample_mode, upsample_mode=upsample_mode, bias=bias)
        if isinstance(iter_num, bool) or not isinstance(iter_num, int) or iter_num < 1:
            raise RobustirError(f"DPIR: iter_num must be a positive integer, got {iter_num!r}")
        if isinstance(modulo, bool) or not isinstance(modulo, int) or modulo < 8 or modulo % 8:
            raise RobustirError(f"DPIR: modulo must be a positive multiple of 8, got {modulo!r}")
        if in_nc - 1 != out_nc:
            raise RobustirError(f"DPIR: the prior must output the image channels (in_nc - 1 = {in_nc - 1}), got "
                                f"out_nc={out_nc}")
        self.iter_num = iter_num
        self.sigma1 = check_positive(sigma1, "sigma1")
        self.lam = check_positive(lam, "lam")
        self.x8 = bool(x8)
        self.modulo = modulo

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """One DRUNet pass at per-image levels `(N,)`, replicate-padded to `modulo` and cropped back."""
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, (-w) % self.modulo, 0, (-h) % self.modulo), mode="replicate")
        return super().forward(drunet_input(xp, sigma))[..., :h, :w]

    def forward(self, y: Tensor, sigma: Tensor, kernel: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Restore `(N, C, H, W)` images; `sigma` `(N,)` image noise levels in [0,1] units; `kernel` (kh, kw) or
        (N, 1, kh, kw) blur kernel (convolution, centre at (kh // 2, kw // 2)), or None for plain denoising."""
        if not isinstance(y, Tensor) or y.ndim != 4 or y.shape[1] != self.image_channels:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise RobustirError(f"DPIR: image must have shape (N, {self.image_channels}, H, W), got {shape}")
        sigma = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).reshape(-1).expand(y.shape[0])
        if kernel is None:
            return self.denoise(y, sigma)
        from robustir.degradations.functional import as_kernel_batch

        k = as_kernel_batch(kernel, y.shape[0], y)
        otf = _otf(k, (y.shape[-2], y.shape[-1]))
        y_hat = torch.fft.rfft2(y)
        sigmas, alphas = hqs_schedule(sigma, iter_num=self.iter_num, sigma1=self.sigma1, lam=self.lam)
        x = y
        for i in range(self.iter_num):
            x = hqs_data_step(x, y_hat, otf, alphas[:, i])
            mode = i % 8 if self.x8 else 0
            x = dihedral_inverse(self.denoise(dihedral(x, mode), sigmas[:, i]), mode)
        return x


_DRUNET = {"nc": [64, 128, 256, 512], "nb": 4, "act_mode": "R", "downsample_mode": "strideconv",
           "upsample_mode": "convtranspose", "bias": False}
register_preset("dpir-gray", {"type": "DPIR", "in_nc": 2, "out_nc": 1, **_DRUNET, "iter_num": 8, "x8": True},
                "DPIR deblurring, gray: HQS K=8 with the DRUNet prior (loads drunet_gray.pth)")
register_preset("dpir-color", {"type": "DPIR", "in_nc": 4, "out_nc": 3, **_DRUNET, "iter_num": 8, "x8": True},
                "DPIR deblurring, colour: HQS K=8 with the DRUNet prior (loads drunet_color.pth)")
