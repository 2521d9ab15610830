"""Robustness curves: PSNR versus ε for every image, in one batched pass (ε × restarts stacked along the batch).

`robustness_curve(model, x, ref, eps=[1, 2, 4, 8]/255)` returns a `RobustnessCurve` whose arrays are ready to plot
(`psnr[e, i]` is image i's worst PSNR over restarts at budget eps[e]) and whose `rows()` go straight to a CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustir.attacks.engine import Attack, frozen_model
from robustir.attacks.objectives import as_objective
from robustir.attacks.threat import L2Ball, LinfBall, check_eps
from robustir.attacks.updates import L2Step, SignStep
from robustir.checks import check_image, check_same_shape
from robustir.errors import RobustirError
from robustir.metrics import psnr


@dataclass
class RobustnessCurve:
    """PSNR versus budget: `eps (E,)`, `psnr (E, N)` (worst over restarts), `clean_psnr (N,)`, `loss (E, N)`.

    `all_psnr (E, R, N)` keeps every restart.
    """

    eps: Tensor
    psnr: Tensor
    clean_psnr: Tensor
    loss: Tensor
    all_psnr: Tensor
    norm: str

    def rows(self) -> list[dict[str, float | int]]:
        """One row per (eps, image): eps (0-255 scale too), clean and attacked PSNR, drop."""
        out = []
        for e in range(self.eps.shape[0]):
            for i in range(self.psnr.shape[1]):
                out.append({"image": i, "eps": float(self.eps[e]), "eps_255": float(self.eps[e]) * 255,
                            "clean_psnr": float(self.clean_psnr[i]), "adv_psnr": float(self.psnr[e, i]),
                            "psnr_drop": float(self.clean_psnr[i] - self.psnr[e, i])})
        return out

    def mean(self) -> Tensor:
        """Mean attacked PSNR over images, `(E,)`."""
        return self.psnr.mean(dim=1)


def robustness_curve(model: Callable[..., Tensor], x: Tensor, ref: Tensor, eps: Sequence[float] | Tensor, *,
                     norm: str = "linf", steps: int = 10, alpha_ratio: float = 0.25, restarts: int = 1,
                     objective: str = "mse", value_range: tuple[float | None, float | None] | None = (0.0, 1.0),
                     rms: bool = True, generator: torch.Generator | None = None, batch_size: int | None = None,
                     cond: Mapping[str, Any] | None = None, **engine: Any) -> RobustnessCurve:
    """Attack every image at every budget (and restart) in stacked batches; return PSNR versus ε.

    Args:
        model: `model(y, **cond) -> Tensor`; x: inputs `(N, C, H, W)`; ref: ground truth for the objective and PSNR.
        eps: budgets in [0,1] units (e.g. `torch.tensor([1, 2, 4, 8]) / 255`); L2 budgets are per-entry (ε·√d) when
            `rms=True`.
        norm: "linf" (sign steps) or "l2" (normalised steps).
        steps, alpha_ratio: T steps of size α = alpha_ratio·ε (per sample).
        restarts: independent random starts per (ε, image); the worst PSNR is kept.
        batch_size: samples per attack call (memory); None runs all E·R·N at once.
        engine: further `Attack` options (checkpoint, amp_dtype, ...).
    """
    check_image(x, "x", value_range=None)
    check_same_shape(ref, x, "ref", "x")
    e = torch.as_tensor(eps, dtype=torch.float32).reshape(-1)
    check_eps(e, "robustness_curve", upper=1.0 if (norm == "linf" or rms) else None)
    if norm not in ("linf", "l2"):
        raise RobustirError(f"robustness_curve: norm must be 'linf' or 'l2', got {norm!r}")
    if isinstance(restarts, bool) or int(restarts) < 1:
        raise RobustirError(f"robustness_curve: restarts must be >= 1, got {restarts!r}")
    n, n_eps, r = x.shape[0], e.shape[0], int(restarts)
    total = n_eps * r * n
    # sample k = (e·R + restart)·N + i
    eps_all = e.repeat_interleave(r * n).to(x.device)
    big_x = x.repeat(n_eps * r, *([1] * (x.ndim - 1)))
    big_ref = ref.repeat(n_eps * r, *([1] * (ref.ndim - 1)))
    big_cond = {k: _repeat(v, n, n_eps * r) for k, v in (cond or {}).items()}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    step = batch_size or total
    psnr_all = torch.empty(total, device=x.device)
    loss_all = torch.empty(total, device=x.device)
    obj = as_objective(objective, against="ref")
    for s in range(0, total, step):
        sl = slice(s, min(s + step, total))
        ep = eps_all[sl]
        if norm == "linf":
            atk = Attack(LinfBall(ep, value_range=value_range), obj, SignStep(ep * alpha_ratio), steps, True, gen,
                         **engine)
        else:
            atk = Attack(L2Ball(ep, value_range=value_range, rms=rms), obj, L2Step(ep * alpha_ratio, rms=rms), steps,
                         True, gen, **engine)
        kw = {k: (v[sl] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == total else v)
              for k, v in big_cond.items()}
        res = atk(model, big_x[sl], ref=big_ref[sl], cond=kw)
        with torch.no_grad(), frozen_model(model):
            out = model(res.best_x_adv, **kw).float()
        psnr_all[sl] = psnr(out.clamp(0, 1), big_ref[sl].float())
        loss_all[sl] = res.best_loss
    with torch.no_grad(), frozen_model(model):
        clean = psnr(model(x, **dict(cond or {})).float().clamp(0, 1), ref.float())
    grid = psnr_all.reshape(n_eps, r, n)
    worst, idx = grid.min(dim=1)
    loss = loss_all.reshape(n_eps, r, n).gather(1, idx.unsqueeze(1)).squeeze(1)
    return RobustnessCurve(eps=e, psnr=worst, clean_psnr=clean, loss=loss, all_psnr=grid, norm=norm)


def _repeat(value: Any, n: int, times: int) -> Any:
    """Repeat batch-shaped cond tensors along the stacked batch; leave scalars and shared tensors alone."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == n and n > 1:
        return value.repeat(times, *([1] * (value.ndim - 1)))
    return value
