"""Random camera-shake motion-blur kernels (Boracchi & Foi, "Modeling the performance of image restoration from
motion blur", IEEE TIP 2012): a random-walk trajectory with inertia, a centripetal pull, Gaussian jitter and rare
abrupt shakes, rasterised with sub-pixel bilinear splatting into a kernel whose centre of mass is the kernel centre.
"""

from __future__ import annotations

import cmath
import math

import torch
from torch import Tensor

from robustir.degradations.functional import kernel_center
from robustir.errors import RobustirError

# Boracchi-Foi's "anxiety" (shake strength) at intensity 1. Their demo draws it from [0, 0.1], which at 2000 steps
# curls most paths into small blobs; DeblurGAN samples 1e-4..3e-3. Intensity 0..1 maps linearly onto [0, 0.005].
MAX_ANXIETY = 0.005
# Their trajectory lives on a 64-pixel canvas with total length 60; the walk is simulated in those units (the
# centripetal pull depends on absolute positions) and scaled to the requested length afterwards.
NATIVE_LENGTH = 60.0


def motion_trajectory(steps: int, *, intensity: float, length: float, generator: torch.Generator) -> Tensor:
    """A camera-shake trajectory: `(steps, 2)` float64 positions (row, col) with total path length `length`.

    The random parameters follow Boracchi & Foi: centripetal pull U(0, 0.7), big-shake probability U(0, 0.2),
    Gaussian jitter U(0, 10) and a uniform initial direction; `intensity` in [0, 1] scales their anxiety to
    [0, MAX_ANXIETY] (0 gives a straight line).
    """
    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    centripetal, big_shake, jitter, angle = (0.7 * u(1)).item(), (0.2 * u(1)).item(), (10 * u(1)).item(), \
        (2 * math.pi * u(1)).item()
    shake_draws = u(steps).tolist()
    shake_angles = u(steps).tolist()
    normals = torch.randn(steps, 2, generator=generator, dtype=torch.float64).tolist()
    anxiety = MAX_ANXIETY * intensity
    step_len = NATIVE_LENGTH / max(steps - 1, 1)
    v = cmath.exp(1j * angle) * (anxiety if anxiety > 0 else step_len)  # B-F's initial speed
    pos = [0j]
    for t in range(steps - 1):
        shake = 2 * v * cmath.exp(1j * (math.pi + shake_angles[t] - 0.5)) if shake_draws[t] < big_shake * anxiety \
            else 0j
        v = v + shake + anxiety * (jitter * complex(*normals[t]) - centripetal * pos[-1]) * step_len
        v = v / abs(v) * step_len if abs(v) > 0 else cmath.exp(1j * angle) * step_len
        pos.append(pos[-1] + v)
    z = torch.tensor(pos, dtype=torch.complex128) * (length / NATIVE_LENGTH)
    return torch.stack([z.imag, z.real], dim=1)


def rasterize_trajectory(points: Tensor, size: int) -> Tensor:
    """Splat equally weighted sub-pixel points `(T, 2)` (row, col, inside [0, size-1]) bilinearly; sum 1."""
    floor = points.floor().clamp(0, size - 1)
    frac = points - floor
    r0, c0 = floor[:, 0].long(), floor[:, 1].long()
    r1, c1 = (r0 + 1).clamp(max=size - 1), (c0 + 1).clamp(max=size - 1)
    fr, fc = frac[:, 0], frac[:, 1]
    out = torch.zeros(size * size, dtype=points.dtype)
    w = 1.0 / points.shape[0]
    for rr, cc, weight in ((r0, c0, (1 - fr) * (1 - fc)), (r0, c1, (1 - fr) * fc), (r1, c0, fr * (1 - fc)),
                           (r1, c1, fr * fc)):
        out.index_add_(0, rr * size + cc, weight * w)
    return out.reshape(size, size)


def motion_kernel(size: int, *, intensity: float = 0.5, generator: torch.Generator | None = None,
                  length: float | None = None, steps: int = 2000) -> Tensor:
    """A random camera-shake blur kernel `(size, size)`, float32, non-negative, summing to 1.

    Args:
        size: kernel side in pixels (odd or even; the centre is `size // 2`).
        intensity: shake strength in [0, 1] (0: straight linear motion, 1: strongly curved, jittery path).
        generator: randomness; the same generator state gives the same kernel. None draws a fresh seed.
        length: trajectory path length in pixels before fitting (default `size`); a trajectory that does not fit
            around the centre is shrunk uniformly to fit.
        steps: trajectory samples (exposure-time resolution; 2000 as Boracchi & Foi).

    Returns:
        The kernel, whose centre of mass is exactly the kernel centre (so the blur does not shift the image).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise RobustirError(f"size: expected a positive int, got {size!r}")
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not 0 <= intensity <= 1:
        raise RobustirError(f"intensity: expected a number in [0, 1], got {intensity!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise RobustirError(f"steps: expected an int >= 2, got {steps!r}")
    if length is not None and (isinstance(length, bool) or not isinstance(length, (int, float)) or length <= 0):
        raise RobustirError(f"length: expected a positive number of pixels, got {length!r}")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise RobustirError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if size == 1:
        return torch.ones(1, 1)
    traj = motion_trajectory(steps, intensity=float(intensity), length=float(length or size),
                             generator=generator)
    # centre of mass -> kernel centre (bilinear splatting preserves it); shrink until every point fits the grid
    traj = traj - traj.mean(dim=0)
    c = kernel_center(size, size)[0]
    low, high = float(c), float(size - 1 - c)
    need = max(float(-traj.min()) / low if low > 0 else 0.0, float(traj.max()) / high if high > 0 else 0.0)
    if need > 1:
        traj = traj / need
    kernel = rasterize_trajectory((traj + c).clamp(0, size - 1), size)
    return (kernel / kernel.sum()).to(torch.float32)


def motion_kernels(count: int, size: int, *, intensity: float | tuple[float, float] = 0.5,
                   generator: torch.Generator | None = None) -> Tensor:
    """`count` random motion kernels as a per-sample batch `(count, 1, size, size)`; intensity may be a (lo, hi) range."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RobustirError(f"count: expected a positive int, got {count!r}")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    lo, hi = (intensity, intensity) if isinstance(intensity, (int, float)) else intensity
    out = []
    for _ in range(count):
        level = lo + (hi - lo) * torch.rand(1, generator=generator, dtype=torch.float64).item()
        out.append(motion_kernel(size, intensity=level, generator=generator))
    return torch.stack(out)[:, None]
