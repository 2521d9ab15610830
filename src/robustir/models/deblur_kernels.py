"""Kernel handling shared by the non-blind deblurring networks' restorer adapters (DWDN, RGDN).

Convention of robustir's uniform call: `kernel` is the blur kernel `k` of the forward model `y = Blur(k)(x)`, i.e. a
true convolution `y = k * x` with the kernel centre at index `(kh // 2, kw // 2)` (as `robustir.degradations.blur`,
`scipy.ndimage.convolve`). Each adapter turns it into its network's own convention.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from robustir.degradations.functional import as_kernel_batch
from robustir.errors import RobustirError


def batch_kernels(kernel: object, y: Tensor, name: str) -> Tensor:
    """Validate a `(kh, kw)`, `(1, 1, kh, kw)` or `(N, 1, kh, kw)` blur kernel for the batch `y`; return `(N,1,kh,kw)`.

    Shapes are parsed as `robustir.degradations.blur` parses them; a kernel larger than the image is rejected.
    """
    n, _, h, w = y.shape
    k = as_kernel_batch(kernel, n, y, name=f"{name}: kernel")
    if k.shape[-2] > h or k.shape[-1] > w:
        raise RobustirError(f"{name}: kernel of size {k.shape[-2]}x{k.shape[-1]} is larger than the image "
                            f"({h}x{w})")
    return k.expand(n, -1, -1, -1)


def odd_square(k: Tensor) -> Tensor:
    """Zero-pad `(N, 1, kh, kw)` kernels to an odd square size, keeping the centre `(kh//2, kw//2)` at the centre."""
    kh, kw = k.shape[-2:]
    r = max(kh // 2, kw // 2, (kh - 1) - kh // 2, (kw - 1) - kw // 2)
    # left/top pad = r - centre, right/bottom pad = r - (size-1-centre)
    pads = (r - kw // 2, r - (kw - 1 - kw // 2), r - kh // 2, r - (kh - 1 - kh // 2))
    return F.pad(k, pads) if any(pads) else k
