"""Pixel losses for training, each returning one value per sample `(N,)` (the batch loss is their mean).

Per-sample values let batch-preparation steps (FGSM adversarial training crafts with the training loss, METHODS 2.5)
and mixed batches weight samples without re-implementing the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.checks import check_same_shape
from robustir.errors import RobustirError

PerSampleLoss = Callable[[Tensor, Tensor], Tensor]

_PSNR_SCALE = 10.0 / math.log(10.0)


def _flat(pred: Tensor, target: Tensor) -> Tensor:
    """The per-sample difference, flattened to (N, d)."""
    check_same_shape(pred, target, "prediction", "target")
    return (pred - target).flatten(1)


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per sample, (N,)."""
    return _flat(pred, target).abs().mean(1)


def l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per sample, (N,)."""
    return _flat(pred, target).square().mean(1)


def psnr_loss(pred: Tensor, target: Tensor) -> Tensor:
    """NAFNet's PSNRLoss per sample: (10/ln 10)·ln(MSE + 1e-8), i.e. minus the PSNR of a [0,1] image, (N,)."""
    return _PSNR_SCALE * torch.log(l2_loss(pred, target) + 1e-8)


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier loss per sample: mean sqrt(diff² + eps²), (N,)."""
    return (_flat(pred, target).square() + eps * eps).sqrt().mean(1)


def build_loss(kind: str, *, weight: float = 1.0, eps: float = 1e-3) -> PerSampleLoss:
    """A per-sample loss `(pred, target) -> (N,)` by name: L1, L2, PSNR or Charbonnier, times `weight`."""
    table: dict[str, PerSampleLoss] = {
        "L1": l1_loss,
        "L2": l2_loss,
        "PSNR": psnr_loss,
        "Charbonnier": lambda p, t: charbonnier_loss(p, t, eps),
    }
    if kind not in table:
        raise RobustirError(f"loss type {kind!r} is unknown; expected one of {', '.join(table)}")
    fn = table[kind]
    if weight == 1.0:
        return fn
    return lambda p, t: weight * fn(p, t)


def multi_output_loss(loss: PerSampleLoss, outputs: Sequence[Tensor], target: Tensor,
                      weights: Sequence[float] | None = None) -> Tensor:
    """Weighted sum over a network's outputs of `loss(output, target at that output's scale)`, per sample (N,).

    A reduced-scale output (DWDN's half scale) is scored against the target area-downsampled to its size, as the
    official multi-scale losses do; `weights` default to 1 per output.
    """
    if not outputs:
        raise RobustirError("multi_output_loss: the network returned no outputs")
    if weights is None:
        weights = [1.0] * len(outputs)
    if len(weights) != len(outputs):
        raise RobustirError(f"loss.output_weights: {len(weights)} weights for a network with {len(outputs)} outputs")
    total = None
    for w, out in zip(weights, outputs):
        if w == 0:
            continue
        t = target if out.shape[-2:] == target.shape[-2:] else _downscale(target, out.shape[-2:])
        term = w * loss(out.float(), t.float())
        total = term if total is None else total + term
    if total is None:
        raise RobustirError(f"loss.output_weights: every weight is zero ({list(weights)})")
    return total


def _downscale(target: Tensor, size: tuple[int, int]) -> Tensor:
    """The target at a reduced output size: area averaging over the (edge-replicated) integer-factor cells."""
    h, w = target.shape[-2:]
    f = max(1, round(h / size[0]))
    ph, pw = size[0] * f - h, size[1] * f - w
    if ph < 0 or pw < 0 or ph >= f or pw >= f:
        raise RobustirError(f"an output of size {tuple(size)} is not the {tuple(target.shape[-2:])} target at an "
                            f"integer scale")
    padded = F.pad(target, (0, pw, 0, ph), mode="replicate") if ph or pw else target
    return F.avg_pool2d(padded, f)
