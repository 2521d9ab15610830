"""Threat models: the set a perturbation may range over, with the valid input range folded into the projection.

A threat is a small frozen dataclass (`LinfBall`, `L2Ball`, `Masked`, `ZeroMean`, `KernelSimplexBall`). The attack
engine calls `threat.prepare(clean, mask)` once per attack to get a `Projector` that holds the precomputed per-sample
bounds; the loop then only calls `projector.project_(adv)` (in place) on the *iterate* `adv` (the model input, not the
difference), which is how the papers and the `cospgd` package write PGD: y^{t+1} = Φ_r(y + clip_ε(ỹ − y)).

Budgets `eps` are a float or a per-sample `(N,)` tensor, so an ε sweep is one batch. `value_range=(0, 1)` clips to
valid images; `value_range=None` leaves noisy observations unclipped (DnCNN convention, METHODS.md §4.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from robustir.errors import RobustirError

ValueRange = tuple[float | None, float | None] | None


def _check_range(value_range: ValueRange, name: str) -> None:
    """Validate a `(lo, hi)` value range (either side may be None)."""
    if value_range is None:
        return
    if not (isinstance(value_range, tuple) and len(value_range) == 2):
        raise RobustirError(f"{name}: value_range must be (lo, hi) or None, got {value_range!r}")
    lo, hi = value_range
    if lo is not None and hi is not None and not float(lo) < float(hi):
        raise RobustirError(f"{name}: value_range must have lo < hi, got {value_range!r}")


def check_eps(eps: float | Tensor, name: str, *, upper: float | None) -> None:
    """Raise unless every budget is finite, > 0 and (for L-inf) at most `upper`."""
    t = torch.as_tensor(eps, dtype=torch.float64).detach().reshape(-1).cpu()
    if t.numel() == 0:
        raise RobustirError(f"{name}: eps is empty")
    if torch.isnan(t).any() or torch.isinf(t).any():
        raise RobustirError(f"{name}: eps must be finite, got {t.tolist()}")
    if (t <= 0).any():
        raise RobustirError(f"{name}: eps must be > 0, got {t.tolist()}")
    if upper is not None and (t > upper).any():
        raise RobustirError(f"{name}: eps must be at most {upper:g} (images live in [0,1]; write 8/255, not 8), got "
                            f"{t.tolist()}")


def per_sample(value: float | Tensor, n: int, like: Tensor, name: str) -> Tensor:
    """A float or `(N,)` tensor as an `(N, 1, ..., 1)` tensor broadcastable against `like` (dtype/device of `like`)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).detach()
    if t.numel() == 1:
        t = t.reshape(1).expand(n)
    elif t.ndim != 1 or t.numel() != n:
        raise RobustirError(f"{name}: expected a number or one value per sample ({n}), got shape {tuple(t.shape)}")
    return t.reshape((n,) + (1,) * (like.ndim - 1))


def _sample_dims(t: Tensor) -> tuple[int, ...]:
    """The non-batch dimensions of `t` (norms and means are taken per sample over these)."""
    return tuple(range(1, t.ndim))


def draw(kind: str, shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator],
         dtype: torch.dtype) -> Tensor:
    """`torch.rand`/`torch.randn` of `shape` from one generator, or one generator per sample (row i from generator i).

    Per-sample generators make a sample's random start independent of the batch it is computed in.
    """
    fn = torch.rand if kind == "rand" else torch.randn
    if isinstance(generator, torch.Generator):
        return fn(shape, generator=generator, device=generator.device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise RobustirError(f"generator: got {len(gens)} generators for a batch of {shape[0]} (one per sample)")
    return torch.cat([fn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(gens[0].device)
                      for g in gens])


def _uniform(shape: tuple[int, ...], low: Tensor, generator: torch.Generator | Sequence[torch.Generator],
             like: Tensor) -> Tensor:
    """U(−low, low) per entry, bit-identical to `Tensor.uniform_(-low, low)` on CPU for a scalar `low`.

    Draws float32 uniforms from `generator` (on the generator's device) and maps them in float64, as ATen's CPU kernel
    does, so a seeded run equals the `cospgd` package's `init_linf` under `torch.manual_seed` of the same seed.
    """
    r = draw("rand", shape, generator, torch.float32).to(like.device)
    lo = low.to(torch.float32)
    u = r.double() * (lo + lo).double() - lo.double()
    return u.to(like.dtype)


@runtime_checkable
class Projector(Protocol):
    """Per-attack projection state (bounds precomputed once from the clean input)."""

    def start(self, kind: str, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        """A random starting iterate of the given kind ('uniform', 'normal')."""

    def project_(self, adv: Tensor) -> None:
        """Project the iterate `adv` onto the threat set in place."""

    def mask_grad_(self, grad: Tensor) -> None:
        """Zero the gradient where the threat allows no change (in place)."""


class _Base:
    """Shared helpers for the projectors."""

    clean: Tensor
    mask: Tensor | None

    def mask_grad_(self, grad: Tensor) -> None:
        """Zero the gradient outside the mask (the L2 step then normalises inside the mask only)."""
        if self.mask is not None:
            grad.mul_(self.mask)


class _LinfProjector(_Base):
    """L-inf ball ∩ value range, in place: adv ← clip_r(x + clip(adv − x, −ε, ε)) with ε precomputed per sample.

    These are the reference operations (the `cospgd` package, torchattacks) in the same order, so the iterates are
    bit-identical to theirs. A single clamp of adv against precomputed bounds [x − ε, x + ε] would be one pass cheaper
    but differs in the last bit wherever fl(x + fl(adv − x)) ≠ adv (measured: ~0.3 % of pixels after 3 DnCNN steps).
    """

    def __init__(self, clean: Tensor, eps: Tensor, value_range: ValueRange, mask: Tensor | None) -> None:
        self.clean, self.mask = clean, mask
        self.eps = eps
        self.radius = eps if mask is None else eps * mask
        self.neg_radius = -self.radius
        self.lo, self.hi = value_range if value_range is not None else (None, None)

    def _clip_range_(self, adv: Tensor) -> None:
        if self.lo is not None or self.hi is not None:
            adv.clamp_(min=self.lo, max=self.hi)

    def start(self, kind: str, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        """x + u, u ~ U(−ε, ε) ('uniform', PGD) or clip(N(0,1), ±ε) ('normal', seed-001 code), clipped to the range."""
        x = self.clean
        if kind == "uniform":
            u = _uniform(tuple(x.shape), self.eps, generator, x)
        elif kind == "normal":
            n = draw("randn", tuple(x.shape), generator, x.dtype).to(x.device)
            u = torch.maximum(torch.minimum(n, self.eps), -self.eps)
        else:
            raise RobustirError(f"random_start: unknown kind {kind!r} for an L-inf threat; use 'uniform' or 'normal'")
        if self.mask is not None:
            u = u * self.mask
        adv = x + u  # |u| <= ε already: only the range clip remains (as `cospgd.init_linf`)
        self._clip_range_(adv)
        return adv

    def project_(self, adv: Tensor) -> None:
        """In place, no allocation: δ = clip(adv − x, ±ε); adv = clip_r(x + δ)."""
        adv.sub_(self.clean)
        torch.clamp(adv, self.neg_radius, self.radius, out=adv)
        adv.add_(self.clean)
        self._clip_range_(adv)


class _L2Projector(_Base):
    """L2 ball (shrink only, as `cospgd.lp_normalize(decrease_only=True)`) then clip to the value range."""

    def __init__(self, clean: Tensor, eps: Tensor, value_range: ValueRange, mask: Tensor | None,
                 zero_mean: bool = False) -> None:
        self.clean, self.mask, self.eps = clean, mask, eps
        self.lo, self.hi = value_range if value_range is not None else (None, None)
        self.zero_mean = zero_mean
        self.dims = _sample_dims(clean)
        self._delta = torch.empty_like(clean)
        if zero_mean:
            m = torch.ones_like(clean) if mask is None else mask.expand_as(clean).to(clean.dtype)
            self._count = m.sum(dim=self.dims, keepdim=True).clamp_min(1.0)
            self._mean_mask = m

    def _clip_range_(self, adv: Tensor) -> None:
        if self.lo is not None or self.hi is not None:
            adv.clamp_(min=self.lo, max=self.hi)

    def _shrink_(self, d: Tensor) -> None:
        """d ← d / max(‖d‖₂/ε, 1), the same operations in the same order as the `cospgd` package."""
        n = torch.linalg.vector_norm(d, dim=self.dims, keepdim=True).clamp_min(1e-12)
        d.div_(torch.clamp_min(n / self.eps, 1.0))

    def _zero_mean_(self, d: Tensor) -> None:
        if self.zero_mean:
            mean = d.sum(dim=self.dims, keepdim=True) / self._count
            d.sub_(mean * self._mean_mask)

    def start(self, kind: str, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        """x + u with u ~ U(−1, 1) rescaled to ‖u‖₂ = ε exactly (`cospgd.init_l2`), then clipped to the range."""
        x = self.clean
        if kind != "uniform":
            raise RobustirError(f"random_start: unknown kind {kind!r} for an L2 threat; use 'uniform'")
        r = draw("rand", tuple(x.shape), generator, x.dtype).to(x.device)
        u = r * 2.0 - 1.0
        if self.mask is not None:
            u = u * self.mask
        self._zero_mean_(u)
        n = torch.linalg.vector_norm(u, dim=self.dims, keepdim=True).clamp_min(1e-12)
        u = u / (n / self.eps)
        adv = x + u
        self._clip_range_(adv)
        return adv

    def project_(self, adv: Tensor) -> None:
        """δ = adv − x; mask; zero-mean; shrink into the ball; adv = clip(x + δ)."""
        d = torch.sub(adv, self.clean, out=self._delta)
        if self.mask is not None:
            d.mul_(self.mask)
        self._zero_mean_(d)
        self._shrink_(d)
        torch.add(self.clean, d, out=adv)
        self._clip_range_(adv)


class _KernelProjector(_Base):
    """Euclidean projection onto {k ≥ 0, Σk = 1, |k − k₀| ≤ ε}: bisection on the shift τ of clamp(v − τ, l, u)."""

    def __init__(self, clean: Tensor, eps: Tensor, iterations: int) -> None:
        self.clean, self.mask, self.eps = clean, None, eps
        self.lower = (clean - eps).clamp_(min=0.0)
        self.upper = clean + eps
        self.iterations = iterations
        self.dims = (-2, -1)

    def start(self, kind: str, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        """k₀ + u, u ~ U(−ε, ε), projected back onto the constrained simplex."""
        if kind != "uniform":
            raise RobustirError(f"random_start: kernel threats support only 'uniform', got {kind!r}")
        k = self.clean
        u = _uniform(tuple(k.shape), self.eps, generator, k)
        adv = k + u
        self.project_(adv)
        return adv

    def project_(self, adv: Tensor) -> None:
        """Exact projection up to bisection precision (fixed iteration count: no host synchronisation)."""
        lo_tau = (adv - self.upper).amin(dim=self.dims, keepdim=True)  # every entry at its upper bound: sum >= 1
        hi_tau = (adv - self.lower).amax(dim=self.dims, keepdim=True)  # every entry at its lower bound: sum <= 1
        for _ in range(self.iterations):
            tau = 0.5 * (lo_tau + hi_tau)
            s = torch.clamp(adv - tau, self.lower, self.upper).sum(dim=self.dims, keepdim=True)
            too_big = s > 1.0
            lo_tau = torch.where(too_big, tau, lo_tau)
            hi_tau = torch.where(too_big, hi_tau, tau)
        k = torch.clamp(adv - 0.5 * (lo_tau + hi_tau), self.lower, self.upper)
        # the bisection leaves |Σk − 1| ~ 1e-7; renormalising keeps the sum exact to float precision
        adv.copy_(k / k.sum(dim=self.dims, keepdim=True))


@dataclass(frozen=True)
class LinfBall:
    """‖δ‖∞ ≤ ε per sample, intersected with the valid input range.

    Args:
        eps: budget in [0,1] image units (8/255 for "ε = 8"); a float or one value per sample `(N,)`.
        value_range: `(0, 1)` for clean/blurred images, `None` for unclipped noisy observations.
    """

    eps: float | Tensor
    _: KW_ONLY
    value_range: ValueRange = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_eps(self.eps, "LinfBall", upper=1.0)
        _check_range(self.value_range, "LinfBall")

    def prepare(self, clean: Tensor, mask: Tensor | None = None) -> Projector:
        """Precompute the per-sample bounds for one attack."""
        return _LinfProjector(clean, per_sample(self.eps, clean.shape[0], clean, "LinfBall.eps"), self.value_range,
                              mask)

    @property
    def default_start(self) -> str:
        """Random-start kind used when `random_start=True`."""
        return "uniform"


@dataclass(frozen=True)
class L2Ball:
    """‖δ‖₂ ≤ ε per sample (norm over C·H·W), intersected with the valid input range.

    Args:
        eps: radius (any positive value: ε₂ = ε·√d exceeds 1 for realistic images); float or `(N,)`.
        value_range: `(0, 1)` or `None` (noisy observations).
        rms: read `eps` as a per-entry (RMS) budget: the radius is ε·√d, d = C·H·W (Denoising-PGD-L2, METHODS §4.1).
    """

    eps: float | Tensor
    _: KW_ONLY
    value_range: ValueRange = (0.0, 1.0)
    rms: bool = False

    def __post_init__(self) -> None:
        check_eps(self.eps, "L2Ball", upper=1.0 if self.rms else None)
        _check_range(self.value_range, "L2Ball")

    def radius(self, clean: Tensor) -> Tensor:
        """Per-sample radius `(N, 1, ..., 1)`; with `rms=True` it is ε·√d (same RMS budget as an L-inf ε)."""
        eps = per_sample(self.eps, clean.shape[0], clean, "L2Ball.eps")
        return eps * math.sqrt(clean[0].numel()) if self.rms else eps

    def prepare(self, clean: Tensor, mask: Tensor | None = None) -> Projector:
        """Precompute the per-sample radius for one attack."""
        return _L2Projector(clean, self.radius(clean), self.value_range, mask)

    @property
    def default_start(self) -> str:
        """Random-start kind used when `random_start=True`."""
        return "uniform"


Threat = "LinfBall | L2Ball | Masked | ZeroMean | KernelSimplexBall"


def check_mask(mask: object, like: Tensor, name: str = "mask") -> Tensor:
    """A binary `(N|1, C|1, H, W)` mask as a float tensor on `like`'s device; one clear error otherwise."""
    if not isinstance(mask, Tensor):
        raise RobustirError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim != like.ndim or any(m not in (1, s) for m, s in zip(mask.shape, like.shape)):
        raise RobustirError(f"{name}: shape {tuple(mask.shape)} does not broadcast to the input {tuple(like.shape)} "
                            f"(expected (N or 1, C or 1, H, W))")
    m = mask.to(device=like.device, dtype=like.dtype)
    if not bool(((m == 0) | (m == 1)).all()):
        raise RobustirError(f"{name}: must be binary (0/1), got values in [{float(m.min()):g}, {float(m.max()):g}]")
    return m


@dataclass(frozen=True)
class Masked:
    """Perturb only where `mask == 1` (a binary `(N|1, C|1, H, W)` mask); the inner threat's budget applies inside."""

    threat: LinfBall | L2Ball | ZeroMean
    mask: Tensor

    def prepare(self, clean: Tensor, mask: Tensor | None = None) -> Projector:
        """Combine this mask with a call-time mask (logical and) and prepare the inner threat."""
        m = check_mask(self.mask, clean, "Masked.mask")
        if mask is not None:
            m = m * check_mask(mask, clean)
        return self.threat.prepare(clean, m)

    @property
    def default_start(self) -> str:
        """Random-start kind of the inner threat."""
        return self.threat.default_start

    @property
    def value_range(self) -> ValueRange:
        """The inner threat's value range."""
        return self.threat.value_range


@dataclass(frozen=True)
class ZeroMean:
    """ObsAtk-style (Yan et al., IJCAI 2022): the perturbation has zero mean per sample, inside an L2 ball.

    Projection onto the zero-mean hyperplane followed by shrinking into the ball is the exact projection onto their
    intersection (the ball is centred on the hyperplane). Needs `value_range=None`: a range clip would break the mean.
    """

    threat: L2Ball

    def __post_init__(self) -> None:
        if not isinstance(self.threat, L2Ball):
            raise RobustirError(f"ZeroMean: wraps an L2Ball (ObsAtk), got {type(self.threat).__name__}")
        if self.threat.value_range is not None:
            raise RobustirError("ZeroMean: the inner L2Ball needs value_range=None (clipping would break zero mean)")

    def prepare(self, clean: Tensor, mask: Tensor | None = None) -> Projector:
        """Prepare a zero-mean L2 projector."""
        return _L2Projector(clean, self.threat.radius(clean), None, mask, zero_mean=True)

    @property
    def default_start(self) -> str:
        """Random-start kind."""
        return "uniform"

    @property
    def value_range(self) -> ValueRange:
        """No clipping."""
        return None


@dataclass(frozen=True)
class KernelSimplexBall:
    """Threat on a blur kernel `(…, kh, kw)`: ‖k − k₀‖∞ ≤ ε, and k stays a kernel (k ≥ 0, Σk = 1).

    For attacks on the kernel given to a non-blind deblurrer (`cond={"kernel": k}`); the projection is exact
    (bisection on the Lagrange shift, `iterations` halvings).
    """

    eps: float | Tensor
    _: KW_ONLY
    iterations: int = 40

    def __post_init__(self) -> None:
        check_eps(self.eps, "KernelSimplexBall", upper=1.0)
        if int(self.iterations) < 1:
            raise RobustirError(f"KernelSimplexBall: iterations must be >= 1, got {self.iterations}")

    def prepare(self, clean: Tensor, mask: Tensor | None = None) -> Projector:
        """Check the clean kernel and precompute the box bounds."""
        if clean.ndim < 2:
            raise RobustirError(f"KernelSimplexBall: kernel must be (kh, kw) or (N, 1, kh, kw), got {tuple(clean.shape)}")
        if bool((clean < 0).any()) or not math.isclose(float(clean.sum(dim=(-2, -1)).mean()), 1.0, abs_tol=1e-4):
            raise RobustirError("KernelSimplexBall: the clean kernel must be non-negative and sum to 1")
        n = clean.shape[0] if clean.ndim > 2 else 1
        eps = per_sample(self.eps, n, clean, "KernelSimplexBall.eps") if clean.ndim > 2 else \
            torch.as_tensor(self.eps, dtype=clean.dtype, device=clean.device).reshape(1, 1)
        return _KernelProjector(clean, eps, int(self.iterations))

    @property
    def default_start(self) -> str:
        """Random-start kind."""
        return "uniform"

    @property
    def value_range(self) -> ValueRange:
        """Kernels are kept on the simplex instead."""
        return None
