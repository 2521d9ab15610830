"""Pure, differentiable degradation operators: additive white Gaussian noise and uniform blur with its exact adjoint.

Blur convention (used everywhere in robustir, identical to MATLAB's `psf2otf` / DPIR's `p2o`):

    y[i, j] = sum_{u, v} k[u, v] * x[i + cy - u, j + cx - v],     (cy, cx) = (kh // 2, kw // 2)

i.e. a true *convolution* (the kernel is flipped, unlike `F.conv2d`, which correlates) whose centre is the pixel
`(kh // 2, kw // 2)`. For even sizes the centre is the lower-right of the four middle pixels, so a 2x2 kernel
`[[0, 0], [0, 1]]` is the identity. This equals `scipy.ndimage.convolve` (origin 0) for odd and even kernels, and
`scipy.signal.fftconvolve(mode="full")[cy:cy + H, cx:cx + W]`; `fftconvolve(mode="same")` differs by one pixel for even
sizes because it centres at `(kh - 1) // 2`.

Boundaries ('valid' shrinks the output to `(H - kh + 1, W - kw + 1)`, the others keep `(H, W)`):

    ===========  =============================  ========================
    boundary     pixels outside the image        scipy.ndimage mode
    ===========  =============================  ========================
    circular     periodic wrap (FFT-exact)       'wrap'
    reflect      mirror without repeating edge   'mirror'
    replicate    edge pixel repeated             'nearest'
    zeros        zero                            'constant' (cval 0)
    valid        not used (output shrinks)       'constant', then cropped
    ===========  =============================  ========================

Every boundary is a linear map (padding is a gather), so `blur_adjoint` is its exact transpose: for 'valid' the
adjoint is the full correlation of the `(H - kh + 1, W - kw + 1)` input giving `(H, W)`; for the padded boundaries it
is the correlation followed by folding the padded border back onto the pixels it was copied from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.checks import check_image
from robustir.errors import RobustirError

BOUNDARIES = ("circular", "reflect", "replicate", "zeros", "valid")
METHODS = ("auto", "spatial", "fft")
# Above this kernel area `method="auto"` switches to the FFT: on one CPU core and 3x256x256 images the FFT was already
# 2-10x faster from 9x9 on (spatial 7-63 ms vs FFT 2-13 ms for 5x5..27x27); small kernels stay spatial (exact sums).
AUTO_FFT_AREA = 7 * 7


def kernel_center(kh: int, kw: int) -> tuple[int, int]:
    """The kernel pixel that lands on the output pixel: `(kh // 2, kw // 2)` (lower-right middle for even sizes)."""
    return kh // 2, kw // 2


def _check_boundary(boundary: str) -> str:
    if boundary not in BOUNDARIES:
        raise RobustirError(f"boundary: expected one of {', '.join(BOUNDARIES)}, got {boundary!r}")
    return boundary


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise RobustirError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    return method


def as_kernel_batch(kernel: object, batch: int, like: Tensor, name: str = "kernel") -> Tensor:
    """Bring a `(kh, kw)`, `(1, 1, kh, kw)` or `(N, 1, kh, kw)` kernel to `(K, 1, kh, kw)` in `like`'s dtype/device."""
    if not isinstance(kernel, Tensor):
        raise RobustirError(f"{name}: expected a torch.Tensor, got {type(kernel).__name__}")
    if not kernel.is_floating_point():
        raise RobustirError(f"{name}: expected a floating-point tensor, got dtype {kernel.dtype}")
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    elif kernel.ndim == 3 and kernel.shape[0] == 1:
        kernel = kernel[None]
    if kernel.ndim != 4 or kernel.shape[1] != 1 or kernel.shape[0] not in (1, batch):
        raise RobustirError(f"{name}: expected shape (kh, kw), (1, 1, kh, kw) or ({batch}, 1, kh, kw) for a batch of "
                            f"{batch}, got {tuple(kernel.shape)}")
    if kernel.shape[-1] == 0 or kernel.shape[-2] == 0:
        raise RobustirError(f"{name}: kernel is empty, shape {tuple(kernel.shape)}")
    if not bool(torch.isfinite(kernel).all()):
        raise RobustirError(f"{name}: contains NaN or inf values")
    return kernel.to(device=like.device, dtype=like.dtype)


def _pad_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Source index of every padded position along one axis of length `n` (padding as a gather)."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "circular":
        return i % n
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if n == 1:  # reflect on a single pixel: the only value there is
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = i % period
    return torch.where(j >= n, period - j, j)


def _pads(kh: int, kw: int) -> tuple[int, int, int, int]:
    """Padding (top, bottom, left, right) that turns a valid convolution into a same-size one with our centre."""
    cy, cx = kernel_center(kh, kw)
    return kh - 1 - cy, cy, kw - 1 - cx, cx


def pad(x: Tensor, pads: tuple[int, int, int, int], mode: str) -> Tensor:
    """Pad the last two dims by (top, bottom, left, right) with 'circular' | 'reflect' | 'replicate' | 'zeros'."""
    top, bottom, left, right = pads
    if mode == "zeros":
        return F.pad(x, (left, right, top, bottom))
    h, w = x.shape[-2:]
    x = x.index_select(-2, _pad_index(h, top, bottom, mode, x.device))
    return x.index_select(-1, _pad_index(w, left, right, mode, x.device))


def pad_adjoint(y: Tensor, pads: tuple[int, int, int, int], mode: str) -> Tensor:
    """Exact transpose of `pad`: padded border values are added back onto the pixels they were copied from."""
    top, bottom, left, right = pads
    hp, wp = y.shape[-2:]
    h, w = hp - top - bottom, wp - left - right
    if mode == "zeros":
        return y[..., top:top + h, left:left + w]
    shape = list(y.shape)
    shape[-1] = w
    z = y.new_zeros(shape).index_add(-1, _pad_index(w, left, right, mode, y.device), y)
    shape[-2] = h
    return z.new_zeros(shape).index_add(-2, _pad_index(h, top, bottom, mode, y.device), z)


def _use_fft(method: str, kh: int, kw: int) -> bool:
    return method == "fft" or (method == "auto" and kh * kw > AUTO_FFT_AREA)


def _grouped_conv(x: Tensor, k: Tensor, transpose: bool) -> Tensor:
    """Correlate (or transpose-correlate) every channel of sample n with `k[n]` (or the shared `k[0]`)."""
    n, c, h, w = x.shape
    weight = k.flip(-2, -1)  # F.conv2d correlates; flipping makes it the convolution of the module docstring
    op = F.conv_transpose2d if transpose else F.conv2d
    if k.shape[0] == 1:
        out = op(x.reshape(n * c, 1, h, w), weight)
    else:
        out = op(x.reshape(1, n * c, h, w), weight.repeat_interleave(c, dim=0), groups=n * c)
    return out.reshape(n, c, *out.shape[-2:])


def psf2otf(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Real-FFT transfer function `(K, 1, H, W // 2 + 1)` of `(K, 1, kh, kw)` kernels with the centre moved to (0, 0).

    Kernels larger than the image wrap around (the exact circular convolution), so any size is allowed.
    """
    h, w = size
    kh, kw = kernel.shape[-2:]
    cy, cx = kernel_center(kh, kw)
    rows = (torch.arange(kh, device=kernel.device) - cy) % h
    cols = (torch.arange(kw, device=kernel.device) - cx) % w
    k = kernel.new_zeros(*kernel.shape[:-2], h, kw).index_add(-2, rows, kernel)
    k = k.new_zeros(*kernel.shape[:-2], h, w).index_add(-1, cols, k)
    return torch.fft.rfft2(k)


def _fft_linear(xp: Tensor, k: Tensor, transpose: bool) -> Tensor:
    """Circular convolution (or correlation) of padded images with top-left-anchored kernels on the padded grid."""
    hp, wp = xp.shape[-2:]
    kh, kw = k.shape[-2:]
    kf = torch.fft.rfft2(F.pad(k, (0, wp - kw, 0, hp - kh)))
    if transpose:
        kf = kf.conj()
    return torch.fft.irfft2(torch.fft.rfft2(xp) * kf, s=(hp, wp))


def blur(x: Tensor, kernel: Tensor, boundary: str = "circular", method: str = "auto") -> Tensor:
    """Convolve every channel of `(N, C, H, W)` images with a `(kh, kw)` or per-sample `(N, 1, kh, kw)` kernel.

    Args:
        x: images `(N, C, H, W)` (any finite values; noisy images need not lie in [0,1]).
        kernel: blur kernel(s); used as given (normalise with `validate_kernel` first if needed). Differentiable.
        boundary: 'circular' | 'reflect' | 'replicate' | 'zeros' | 'valid' (see the module docstring).
        method: 'spatial' (direct convolution), 'fft', or 'auto' (FFT for kernels larger than 7x7).

    Returns:
        `(N, C, H, W)`, or `(N, C, H - kh + 1, W - kw + 1)` for 'valid'.
    """
    check_image(x, "image", value_range=None)
    _check_boundary(boundary)
    _check_method(method)
    n, _, h, w = x.shape
    k = as_kernel_batch(kernel, n, x)
    kh, kw = k.shape[-2:]
    if boundary == "valid" and (kh > h or kw > w):
        raise RobustirError(f"kernel: a {kh}x{kw} kernel does not fit a {h}x{w} image with boundary 'valid'")
    if _use_fft(method, kh, kw):
        if boundary == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(x) * psf2otf(k, (h, w)), s=(h, w))
        xp = x if boundary == "valid" else pad(x, _pads(kh, kw), boundary)
        return _fft_linear(xp, k, transpose=False)[..., kh - 1:, kw - 1:]
    xp = x if boundary == "valid" else pad(x, _pads(kh, kw), boundary)
    return _grouped_conv(xp, k, transpose=False)


def blur_adjoint(y: Tensor, kernel: Tensor, boundary: str = "circular", method: str = "auto") -> Tensor:
    """Exact adjoint (transpose) of `blur` with the same kernel and boundary: `<blur(x), y> == <x, blur_adjoint(y)>`.

    Args:
        y: `(N, C, H', W')` in the output space of `blur` (for 'valid', H' = H - kh + 1).
        kernel: the kernel(s) given to `blur`.
        boundary: the boundary given to `blur`.
        method: 'spatial', 'fft' or 'auto' (as in `blur`).

    Returns:
        `(N, C, H, W)` (for 'valid', `(N, C, H' + kh - 1, W' + kw - 1)`).
    """
    check_image(y, "image", value_range=None)
    _check_boundary(boundary)
    _check_method(method)
    n, _, h, w = y.shape
    k = as_kernel_batch(kernel, n, y)
    kh, kw = k.shape[-2:]
    if _use_fft(method, kh, kw):
        if boundary == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(y) * psf2otf(k, (h, w)).conj(), s=(h, w))
        z = _fft_linear(F.pad(y, (kw - 1, 0, kh - 1, 0)), k, transpose=True)
    else:
        z = _grouped_conv(y, k, transpose=True)
    return z if boundary == "valid" else pad_adjoint(z, _pads(kh, kw), boundary)


def _sigma_per_image(sigma: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """Noise level(s) on the 0-255 scale as a validated `(N, 1, 1, 1)` tensor."""
    if isinstance(sigma, Tensor):
        s = sigma.to(device=like.device, dtype=like.dtype).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch)
        if s.numel() != batch:
            raise RobustirError(f"sigma: expected one value or {batch} values (one per image), got shape "
                                f"{tuple(sigma.shape)}")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise RobustirError(f"sigma: expected finite non-negative noise levels, got {s.tolist()}")
        return s.reshape(batch, 1, 1, 1)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise RobustirError(f"sigma: expected a number or a (N,) tensor on the 0-255 scale, got {sigma!r}")
    if not math.isfinite(sigma) or sigma < 0:
        raise RobustirError(f"sigma: expected a finite non-negative noise level on the 0-255 scale, got {sigma}")
    return like.new_full((batch, 1, 1, 1), float(sigma))


def gaussian_noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like `x`, drawn from `generator` (a fresh random seed when None, never global)."""
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise RobustirError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    noise = torch.randn(x.shape, generator=generator, dtype=dtype, device=generator.device)
    return noise.to(device=x.device, dtype=x.dtype)


def add_gaussian_noise(x: Tensor, sigma: float | Tensor, *, generator: torch.Generator | None = None,
                       clip: bool = False) -> Tensor:
    """Add white Gaussian noise of standard deviation `sigma / 255` to `(N, C, H, W)` images in [0,1] units.

    Args:
        x: images `(N, C, H, W)`.
        sigma: noise level on the 0-255 scale as the papers quote it (25 means 25/255), a float or one per image `(N,)`.
        generator: the source of randomness (same generator state -> same noise); None draws a fresh seed.
        clip: clamp the result to [0,1]. Off by default: DnCNN-style benchmarks keep the unclipped noisy image.

    Returns:
        The noisy images, same shape as `x`; differentiable w.r.t. `x` (and `sigma` when it is a tensor).
    """
    check_image(x, "image", value_range=None)
    s = _sigma_per_image(sigma, x.shape[0], x)
    y = x + gaussian_noise_like(x, generator) * (s / 255.0)
    return y.clamp(0.0, 1.0) if clip else y
