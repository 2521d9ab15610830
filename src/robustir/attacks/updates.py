"""Update rules: how one gradient moves the iterate, in place, before the threat's projection.

Each rule has `init(adv, clean) -> state` and `step_(adv, grad, state, t)`. The gradient is that of the *score*
(the objective for untargeted attacks, its negative for targeted ones), so every rule ascends; the rule may overwrite
`grad` (the engine owns it). Step sizes are floats or per-sample `(N,)` tensors.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch
from torch import Tensor

from robustir.attacks.threat import per_sample
from robustir.errors import RobustirError


def _check_step(value: float | Tensor, name: str) -> None:
    """Raise unless every step size is finite and > 0."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(-1).cpu()
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise RobustirError(f"{name}: step size must be finite and > 0, got {t.tolist()}")


@dataclass(frozen=True)
class SignStep:
    """ỹ = y + α·sign(g) (FGSM/PGD, L-inf; the `cospgd` package's `step_inf`)."""

    alpha: float | Tensor

    def __post_init__(self) -> None:
        _check_step(self.alpha, "SignStep.alpha")

    def init(self, adv: Tensor, clean: Tensor) -> Any:
        """Per-sample step sizes shaped for broadcasting."""
        return per_sample(self.alpha, adv.shape[0], adv, "SignStep.alpha")

    def step_(self, adv: Tensor, grad: Tensor, state: Any, t: int) -> None:
        """In place: adv += α·sign(grad)."""
        adv.add_(grad.sign_().mul_(state))


@dataclass(frozen=True)
class L2Step:
    """ỹ = y + α·g/max(‖g‖₂, 1e−12), the norm per sample (the `cospgd` package's `step_l2`).

    With `rms=True` the step is α·√d (d = C·H·W), matching an `L2Ball(..., rms=True)` radius.
    """

    alpha: float | Tensor
    _: KW_ONLY
    rms: bool = False

    def __post_init__(self) -> None:
        _check_step(self.alpha, "L2Step.alpha")

    def init(self, adv: Tensor, clean: Tensor) -> Any:
        """Per-sample step sizes and the norm dimensions."""
        alpha = per_sample(self.alpha, adv.shape[0], adv, "L2Step.alpha")
        if self.rms:
            alpha = alpha * math.sqrt(adv[0].numel())
        return alpha, tuple(range(1, adv.ndim))

    def step_(self, adv: Tensor, grad: Tensor, state: Any, t: int) -> None:
        """In place: adv += α·ĝ."""
        alpha, dims = state
        n = torch.linalg.vector_norm(grad, dim=dims, keepdim=True).clamp_min(1e-12)
        adv.add_(grad.div_(n).mul_(alpha))


@dataclass
class _AdamState:
    delta: Tensor
    clean: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int = 0


@dataclass(frozen=True)
class AdamStep:
    """Adam on the perturbation δ, followed by the threat's projection; moments are never reset (seed 001 §3.2).

    Same arithmetic as `torch.optim.Adam` (single-tensor path, no weight decay) minimising the negative score, so
    `AdamStep` + projection equals `opt = Adam([δ], lr); J.backward(); opt.step(); δ ← Π(δ)`.
    """

    lr: float = 1e-3
    _: KW_ONLY
    betas: tuple[float, float] = field(default=(0.9, 0.999))
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if isinstance(self.lr, Tensor):
            raise RobustirError("AdamStep.lr: a single float learning rate (Adam is scale-invariant per entry)")
        _check_step(self.lr, "AdamStep.lr")
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise RobustirError(f"AdamStep.betas: each must be in [0, 1), got {self.betas}")
        _check_step(self.eps, "AdamStep.eps")

    def init(self, adv: Tensor, clean: Tensor) -> Any:
        """Zero moments; δ is the starting perturbation."""
        delta = adv - clean
        return _AdamState(delta, clean, torch.zeros_like(adv), torch.zeros_like(adv))

    def step_(self, adv: Tensor, grad: Tensor, state: Any, t: int) -> None:
        """One Adam step on δ (minimising −score), then adv = x + δ; the engine projects and calls `sync_`."""
        s: _AdamState = state
        b1, b2 = self.betas
        g = grad.neg_()
        s.step += 1
        s.exp_avg.lerp_(g, 1 - b1)
        s.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        bias_correction1 = 1 - b1 ** s.step
        bias_correction2 = 1 - b2 ** s.step
        step_size = self.lr / bias_correction1
        denom = (s.exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(self.eps)
        s.delta.addcdiv_(s.exp_avg, denom, value=-step_size)
        torch.add(s.clean, s.delta, out=adv)

    @staticmethod
    def sync_(adv: Tensor, state: Any) -> None:
        """After projection: δ = Π(x + δ) − x, so the optimiser continues from the projected point."""
        s: _AdamState = state
        torch.sub(adv, s.clean, out=s.delta)


Update = SignStep | L2Step | AdamStep
