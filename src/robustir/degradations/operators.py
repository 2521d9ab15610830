"""Thin `nn.Module` wrappers around the functional degradations: they only store arguments (deepinv/kornia style).

A linear operator exposes `A(x)` and `A_adjoint(y)`; `forward` is the full degradation (for noise: adding it).
`Compose(Blur(k), GaussianNoise(25))` is the usual `y = k * x + n`; its `A` / `A_adjoint` chain only the linear parts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustir.degradations import functional as Fd
from robustir.errors import RobustirError


class Blur(nn.Module):
    """Uniform blur `y = k * x` with a fixed kernel and boundary; `A` / `A_adjoint` are exact transposes.

    Args:
        kernel: `(kh, kw)` shared kernel or `(N, 1, kh, kw)` one per sample (stored as a buffer, used as given).
        boundary: 'circular' | 'reflect' | 'replicate' | 'zeros' | 'valid' (see `robustir.degradations.functional`).
        method: 'auto' | 'spatial' | 'fft'.

    Example:
        >>> op = Blur(torch.full((3, 3), 1 / 9), boundary="reflect")
        >>> op(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, kernel: Tensor, *, boundary: str = "circular", method: str = "auto") -> None:
        super().__init__()
        if not isinstance(kernel, Tensor) or kernel.ndim not in (2, 4):
            shape = tuple(kernel.shape) if isinstance(kernel, Tensor) else type(kernel).__name__
            raise RobustirError(f"kernel: expected a (kh, kw) or (N, 1, kh, kw) tensor, got {shape}")
        self.boundary = Fd._check_boundary(boundary)
        self.method = Fd._check_method(method)
        self.register_buffer("kernel", kernel)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (the operator's conventional name)
        """Blur `x`."""
        return Fd.blur(x, self.kernel, self.boundary, self.method)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """Apply the transpose of `A` to `y`."""
        return Fd.blur_adjoint(y, self.kernel, self.boundary, self.method)

    def forward(self, x: Tensor) -> Tensor:
        """Blur `x` (same as `A`)."""
        return self.A(x)

    def extra_repr(self) -> str:
        """Kernel shape, boundary and method."""
        return f"kernel={tuple(self.kernel.shape)}, boundary={self.boundary!r}, method={self.method!r}"


class GaussianNoise(nn.Module):
    """Additive white Gaussian noise; `sigma` on the 0-255 scale (float or `(N,)`), randomness from `generator`."""

    def __init__(self, sigma: float | Tensor, *, generator: torch.Generator | None = None, clip: bool = False) -> None:
        super().__init__()
        if isinstance(sigma, Tensor):
            self.register_buffer("sigma", sigma)
        else:
            Fd._sigma_per_image(sigma, 1, torch.zeros(1))  # validate early, with the same message
            self.sigma = float(sigma)
        self.generator = generator
        self.clip = clip

    def forward(self, x: Tensor) -> Tensor:
        """Return `x` plus fresh noise from the generator."""
        return Fd.add_gaussian_noise(x, self.sigma, generator=self.generator, clip=self.clip)

    def extra_repr(self) -> str:
        """Noise level and clipping."""
        s = tuple(self.sigma.shape) if isinstance(self.sigma, Tensor) else self.sigma
        return f"sigma={s}, clip={self.clip}"


class Compose(nn.Module):
    """Apply degradations in order, e.g. `Compose(Blur(k), GaussianNoise(2.55))` for `y = k * x + n`."""

    def __init__(self, *ops: nn.Module | Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        if not ops:
            raise RobustirError("Compose: expected at least one degradation")
        for i, op in enumerate(ops):
            if not callable(op):
                raise RobustirError(f"Compose: operation {i} is not callable ({type(op).__name__})")
        self.ops = nn.ModuleList([op if isinstance(op, nn.Module) else _Lambda(op) for op in ops])

    def forward(self, x: Tensor) -> Tensor:
        """Apply every operation in order."""
        for op in self.ops:
            x = op(x)
        return x

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        """The noiseless linear part: every operation that has an `A`, in order."""
        for op in self.ops:
            if hasattr(op, "A"):
                x = op.A(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """Transpose of `A`: the adjoints in reverse order."""
        for op in reversed(self.ops):
            if hasattr(op, "A_adjoint"):
                y = op.A_adjoint(y)
        return y


class _Lambda(nn.Module):
    """Wrap a plain function so it can live in a `Compose`."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        """Call the wrapped function."""
        return self.fn(x)
