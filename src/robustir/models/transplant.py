"""Transplanting a trained Baseline into an Intermediate: squeeze-excitation attention refitted as simplified attention.

Paper 000's Intermediate network is the Baseline with its squeeze-excitation (SE) channel attention,
`x * sigmoid(W2 relu(W1 pool(x) + b1) + b2)`, replaced by the simplified one, `x * (A pool(x) + c)`; Intermediate+ReLU
also swaps GELU for ReLU. Every other tensor has the same name and shape, so a trained Baseline fills all of an
Intermediate except its per-block `sca` 1x1 convolutions. Those are fitted by least squares to the SE outputs the
trained Baseline produces on calibration inputs (the pooled features are what both attentions see), so the
transplanted network starts close to the Baseline's function and fine-tuning starts from a trained network instead of
from scratch. The fit is per block on the source network's own activations; `TransplantReport` gives how much of the
SE output's variance each linear fit explains (R^2) so a poor start is visible before any training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustir.errors import CheckpointMismatchError, RobustirError
from robustir.models.weights import _short, copy_state


@dataclass
class TransplantReport:
    """What a transplant did: copied tensors, refitted blocks with the R^2 of each fit, calibration samples used."""

    copied: int
    samples: int
    r2: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the run's model card)."""
        return {"copied_tensors": self.copied, "calibration_samples": self.samples,
                "r2": {k: round(v, 6) for k, v in self.r2.items()},
                "r2_min": round(min(self.r2.values()), 6) if self.r2 else None}


def _attention_blocks(model: nn.Module, kind: str) -> dict[str, nn.Module]:
    """Blocks of `model` (by name) whose channel attention is `kind` ('se' or 'sca')."""
    return {name: m for name, m in model.named_modules() if name and isinstance(getattr(m, kind, None), nn.Sequential)}


def _check_pair(target: nn.Module, source: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """The matching (se source, sca target) blocks; raise naming the keys when the two are not an SE->SCA pair."""
    src_blocks, dst_blocks = _attention_blocks(source, "se"), _attention_blocks(target, "sca")
    if not src_blocks:
        raise RobustirError("transplant: the source network has no squeeze-excitation ('se') attention to refit; it "
                            "should be a Baseline (attention 'ca')")
    if set(src_blocks) != set(dst_blocks):
        raise CheckpointMismatchError(
            f"transplant: the source's SE blocks ({_short(sorted(src_blocks))}) and the target's simplified-attention "
            f"blocks ({_short(sorted(dst_blocks))}) differ; build the target with the source's skeleton "
            f"(width, block numbers) and attention 'sca'")
    src_state, dst_state = source.state_dict(), target.state_dict()
    refit = {f"{b}.sca.{k}" for b in dst_blocks for k in dst_blocks[b].sca.state_dict()}
    dropped = {f"{b}.se.{k}" for b in src_blocks for k in src_blocks[b].se.state_dict()}
    missing = sorted(set(dst_state) - set(src_state) - refit)
    unexpected = sorted(set(src_state) - set(dst_state) - dropped)
    shapes = sorted(k for k in set(src_state) & set(dst_state) if src_state[k].shape != dst_state[k].shape)
    problems = []
    if missing:
        problems.append(f"the target has tensors the source lacks: {_short(missing)}")
    if unexpected:
        problems.append(f"the source has tensors the target lacks: {_short(unexpected)}")
    if shapes:
        problems.append(f"shapes differ for {_short(shapes)}")
    if problems:
        raise CheckpointMismatchError("transplant: the networks differ beyond the channel attention: "
                                      + "; ".join(problems) + ". The target was left unchanged.")
    return src_blocks, dst_blocks


@torch.no_grad()
def transplant_se_to_sca(target: nn.Module, source: nn.Module, inputs: Iterable[Tensor]) -> TransplantReport:
    """Fill the Intermediate `target` from the trained Baseline `source`, fitting each `sca` to `se` on `inputs`.

    `inputs` are batches the source network takes (its own input convention), e.g. degraded training crops. Every
    tensor except the attention is copied; each block's `sca` 1x1 convolution is the least-squares linear map from the
    pooled features to that block's SE output over all calibration samples. Activations may differ (GELU -> ReLU for
    Intermediate+ReLU): the fit uses the source's own features.
    """
    src_blocks, dst_blocks = _check_pair(target, source)
    pooled: dict[str, list[Tensor]] = {b: [] for b in src_blocks}
    gates: dict[str, list[Tensor]] = {b: [] for b in src_blocks}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            pooled[name].append(args[0].double().mean(dim=(2, 3)).cpu())
            gates[name].append(out.double().flatten(1).cpu())
        return record

    handles = [blk.se.register_forward_hook(hook(name)) for name, blk in src_blocks.items()]
    was_training = source.training
    source.eval()
    try:
        samples = 0
        for x in inputs:
            source(x)
            samples += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        source.train(was_training)
    if samples == 0:
        raise RobustirError("transplant: no calibration inputs; give at least one batch")

    fits: dict[str, tuple[Tensor, Tensor, float]] = {}
    for name in src_blocks:
        p, s = torch.cat(pooled[name]), torch.cat(gates[name])  # (S, C) each
        design = torch.cat([p, torch.ones(len(p), 1, dtype=p.dtype)], dim=1)
        # SVD-based least squares: the minimum-norm fit when the pooled features are collinear (few samples)
        coef = torch.linalg.lstsq(design, s, driver="gelsd").solution  # (C + 1, C)
        resid = s - design @ coef
        total = (s - s.mean(0)).square().sum()
        r2 = 1.0 - float(resid.square().sum() / total) if float(total) > 0 else 1.0
        fits[name] = (coef[:-1].T.contiguous(), coef[-1].contiguous(), r2)

    src_state = source.state_dict()
    copy_state(target, src_state)
    for name, (weight, bias, _) in fits.items():
        conv = dst_blocks[name].sca[1]
        conv.weight.copy_(weight.reshape(conv.weight.shape).to(conv.weight.dtype))
        conv.bias.copy_(bias.to(conv.bias.dtype))
    copied = len(src_state.keys() & target.state_dict().keys())
    return TransplantReport(copied=copied, samples=samples, r2={k: v[2] for k, v in fits.items()})


__all__ = ["TransplantReport", "transplant_se_to_sca"]
