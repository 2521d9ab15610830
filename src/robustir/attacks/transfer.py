"""Transferability (seed 002 eq. 9): craft on one model, evaluate the same adversarial inputs on others.

`transfer(attack, source, targets, x, ref=...)` returns, per target model, clean and attacked PSNR/SSIM and the loss
increase ΔL = MSE(f(y_adv), x) − MSE(f(y), x) per image, with success = ΔL ≥ τ (METHODS.md §4.2). The rows feed
transferability matrices directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from robustir.attacks.engine import Attack, AttackResult, frozen_model
from robustir.checks import check_image, check_same_shape
from robustir.errors import RobustirError
from robustir.metrics import psnr, ssim

Model = Callable[..., Tensor]


@dataclass
class TransferResult:
    """Per-target metrics `(N,)` for clean and adversarial inputs, and the crafting result (when crafted here).

    `metrics[target][name]` for name in clean_psnr, adv_psnr, clean_ssim, adv_ssim, clean_loss, adv_loss,
    delta_loss, success.
    """

    metrics: dict[str, dict[str, Tensor]]
    crafted: AttackResult | None = None
    source: str | None = None
    tau: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float | int | str]]:
        """One flat row per (target, image) with plain numbers (for CSV / tables)."""
        out: list[dict[str, float | int | str]] = []
        for name, m in self.metrics.items():
            for i in range(m["adv_psnr"].shape[0]):
                row: dict[str, float | int | str] = {"source": self.source or "", "target": name, "image": i}
                row.update({k: float(v[i]) for k, v in m.items()})
                out.append(row)
        return out

    def matrix(self, metric: str = "psnr_drop") -> dict[str, float]:
        """Mean over images per target of `psnr_drop` (clean − adversarial PSNR), `success_rate` or a stored metric."""
        res: dict[str, float] = {}
        for name, m in self.metrics.items():
            if metric == "psnr_drop":
                res[name] = float((m["clean_psnr"] - m["adv_psnr"]).mean())
            elif metric == "success_rate":
                res[name] = float(m["success"].float().mean())
            elif metric in m:
                res[name] = float(m[metric].float().mean())
            else:
                raise RobustirError(f"matrix: unknown metric {metric!r}; use psnr_drop, success_rate or {sorted(m)}")
        return res


@torch.no_grad()
def evaluate_transfer(x: Tensor, x_adv: Tensor, gt: Tensor, targets: Mapping[str, Model], *,
                      cond: Mapping[str, Mapping[str, Any]] | Mapping[str, Any] | None = None, tau: float = 0.0,
                      data_range: float = 1.0, batch_size: int | None = None) -> TransferResult:
    """Evaluate fixed adversarial inputs (e.g. a stored Set12-Adv set) on every target model.

    Args:
        x: clean observations `(N, C, H, W)` the attack started from; x_adv: the adversarial ones; gt: ground truth.
        targets: name -> model (`model(y, **cond) -> Tensor`).
        cond: extra model inputs, either shared (`{"sigma": 25/255}`) or per target name (`{"ffdnet": {...}}`).
        tau: success threshold on the MSE increase ΔL.
        batch_size: evaluate in chunks (memory); None evaluates the whole batch at once.
    """
    check_image(x, "x", value_range=None)
    check_image(x_adv, "x_adv", value_range=None)
    check_image(gt, "gt", value_range=None)
    check_same_shape(x_adv, x, "x_adv", "x")
    check_same_shape(gt, x, "gt", "x")
    if not targets:
        raise RobustirError("transfer: targets is empty; give at least one model by name")
    metrics: dict[str, dict[str, Tensor]] = {}
    step = batch_size or x.shape[0]
    for name, model in targets.items():
        kw = _cond_for(cond, name, targets)
        outs: dict[str, list[Tensor]] = {"clean": [], "adv": []}
        with frozen_model(model):
            for s in range(0, x.shape[0], step):
                for key, inp in (("clean", x), ("adv", x_adv)):
                    out = model(inp[s:s + step], **kw)
                    if not isinstance(out, Tensor) or out.shape != gt[s:s + step].shape:
                        raise RobustirError(f"transfer: target {name!r} returned {getattr(out, 'shape', type(out))}, "
                                            f"expected {tuple(gt[s:s + step].shape)}")
                    outs[key].append(out.float())
        clean, adv = torch.cat(outs["clean"]), torch.cat(outs["adv"])
        g = gt.float()
        m = {
            "clean_psnr": psnr(clean.clamp(0, data_range), g, data_range=data_range),
            "adv_psnr": psnr(adv.clamp(0, data_range), g, data_range=data_range),
            "clean_ssim": ssim(clean.clamp(0, data_range), g, data_range=data_range),
            "adv_ssim": ssim(adv.clamp(0, data_range), g, data_range=data_range),
            "clean_loss": (clean - g).square().mean(dim=(1, 2, 3)),
            "adv_loss": (adv - g).square().mean(dim=(1, 2, 3)),
        }
        m["delta_loss"] = m["adv_loss"] - m["clean_loss"]
        m["success"] = m["delta_loss"] >= tau
        metrics[name] = m
    return TransferResult(metrics=metrics, tau=tau)


def transfer(attack: Attack, source: str | Model, targets: Mapping[str, Model], x: Tensor, *, ref: Tensor,
             target: Tensor | None = None, mask: Tensor | None = None,
             cond: Mapping[str, Mapping[str, Any]] | Mapping[str, Any] | None = None, tau: float = 0.0,
             batch_size: int | None = None) -> TransferResult:
    """Craft with `attack` on `source` (a name in `targets` or a model), then evaluate on every model in `targets`.

    `ref` is the ground truth used for the metrics (and by the attack's objective when it compares with `ref`).
    The source's own row is the white-box result; the others measure transfer. Returns a `TransferResult`.
    """
    if isinstance(source, str):
        if source not in targets:
            raise RobustirError(f"transfer: source {source!r} is not among the targets {sorted(targets)}")
        src_name, src_model = source, targets[source]
    else:
        src_name, src_model = getattr(source, "name", type(source).__name__), source
    kw = _cond_for(cond, src_name, targets)
    crafted = attack(src_model, x, ref=ref, target=target, mask=mask, cond=kw)
    res = evaluate_transfer(x, crafted.best_x_adv if attack.track_best else crafted.x_adv, ref, targets, cond=cond,
                            tau=tau, batch_size=batch_size)
    res.crafted, res.source = crafted, src_name
    return res


def _cond_for(cond: Mapping[str, Any] | None, name: str, targets: Mapping[str, Model]) -> dict[str, Any]:
    """Per-target cond when keyed by target names, else the shared dict."""
    if not cond:
        return {}
    if set(cond) <= set(targets) and all(isinstance(v, Mapping) for v in cond.values()):
        return dict(cond.get(name, {}))
    return dict(cond)
