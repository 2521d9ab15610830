"""Attack objectives: each maps a model output and a reference to one value per sample, shape `(N,)`.

The engine *ascends* untargeted objectives and *descends* targeted ones (`objective.targeted`). The batch loss is the
sum of the per-sample values, so a sample's gradient never depends on the batch it is in.

`against` says where the reference comes from:
- "ref": the `ref=` passed to the attack (ground truth, seed 000 / 002);
- "clean_output": the model's own output on the clean input (seed 001 untargeted; zero gradient at δ = 0, so the
  attack needs a random start);
- "target": the `target=` image (targeted attacks, seed 001).
"""

from __future__ import annotations

import warnings
from dataclasses import KW_ONLY, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.errors import RobustirError

Against = Literal["ref", "clean_output", "target"]
_AGAINST = ("ref", "clean_output", "target")
_WARNED_GRAY = False


def _region_mean(per_entry: Tensor, region: Tensor | None) -> Tensor:
    """Per-sample mean over (C, H, W), or over the entries inside `region` (binary, broadcastable)."""
    dims = tuple(range(1, per_entry.ndim))
    if region is None:
        return per_entry.mean(dim=dims)
    r = region.to(per_entry.dtype).expand_as(per_entry)
    return (per_entry * r).sum(dim=dims) / r.sum(dim=dims).clamp_min(1.0)


def _check(against: str, targeted: bool, name: str) -> None:
    if against not in _AGAINST:
        raise RobustirError(f"{name}: against must be one of {_AGAINST}, got {against!r}")
    if targeted and against != "target":
        raise RobustirError(f"{name}: a targeted objective measures the distance to target=, so against='target'")
    if against == "target" and not targeted:
        raise RobustirError(f"{name}: against='target' is a targeted objective; set targeted=True")


@dataclass(frozen=True)
class MSE:
    """Mean squared error per sample (`(N,)`), maximised untargeted or minimised targeted.

    Args:
        against: reference ("ref", "clean_output" or "target").
        targeted: descend towards `target=` instead of ascending away from the reference.
        region: optional binary `(N|1, C|1, H, W)` mask restricting the loss (localized attacks, seed 001 §3.6).
        clamp_output: clamp the model output to [0,1] before the loss (the 000 group's later scripts; parity flag).
    """

    _: KW_ONLY
    against: Against = "ref"
    targeted: bool = False
    region: Tensor | None = None
    clamp_output: bool = False

    def __post_init__(self) -> None:
        _check(self.against, self.targeted, type(self).__name__)

    def per_entry(self, out: Tensor, ref: Tensor) -> Tensor:
        """Entry-wise loss before reduction."""
        return (out - ref).square()

    def __call__(self, out: Tensor, ref: Tensor) -> Tensor:
        """One value per sample, `(N,)`."""
        if self.clamp_output:
            out = out.clamp(0.0, 1.0)
        return _region_mean(self.per_entry(out, ref), self.region)


@dataclass(frozen=True)
class L1(MSE):
    """Mean absolute error per sample; same options as `MSE`."""

    def per_entry(self, out: Tensor, ref: Tensor) -> Tensor:
        """Entry-wise |out − ref|."""
        return (out - ref).abs()


def cospgd_weight(out: Tensor, ref: Tensor, *, targeted: bool = False) -> Tensor:
    """CosPGD per-pixel weight `(N, H, W)`: cos(softmax_c(out), softmax_c(ref)), detached (1 − w when targeted).

    Same operations as `cospgd.Attack.cospgd_scale(..., one_hot=False)` (CosPGD, Agnihotri et al., ICML 2024, eq. 5).
    """
    w = F.cosine_similarity(F.softmax(out, dim=1), F.softmax(ref, dim=1), dim=1)
    if targeted:
        w = 1 - w
    return w.detach()


@dataclass(frozen=True)
class CosPGD(MSE):
    """CosPGD-weighted MSE (Agnihotri et al., ICML 2024; seed 000 eq. 4–5): mean_{c,h,w}(w_{h,w} · (out − ref)²).

    The weight is the cosine similarity of the channel softmaxes of output and reference at each pixel, detached
    (no gradient through it); targeted uses 1 − w. On one-channel images the softmax is identically 1, so CosPGD is
    exactly PGD with MSE (METHODS.md §7.1); a warning says so once.
    """

    def __call__(self, out: Tensor, ref: Tensor) -> Tensor:
        """One value per sample, `(N,)`."""
        global _WARNED_GRAY
        if self.clamp_output:
            out = out.clamp(0.0, 1.0)
        if out.shape[1] == 1 and not _WARNED_GRAY:
            _WARNED_GRAY = True
            warnings.warn("CosPGD on a one-channel output: the channel softmax is constant, so CosPGD is exactly "
                          "PGD with an MSE objective (METHODS.md §7.1)", UserWarning, stacklevel=3)
        w = cospgd_weight(out, ref, targeted=self.targeted)
        return _region_mean(w.unsqueeze(1) * self.per_entry(out, ref), self.region)


Objective = MSE  # every objective is an MSE-family dataclass: (out, ref) -> (N,), with .against and .targeted


def needs_random_start(objective: MSE) -> bool:
    """True for the untargeted objective against the model's own clean output (zero gradient at δ = 0)."""
    return objective.against == "clean_output" and not objective.targeted


def reference_for(objective: MSE, *, ref: Tensor | None, target: Tensor | None, clean_output: Tensor | None
                  ) -> Tensor:
    """Pick the tensor the objective compares with; one clear error when it was not given."""
    if objective.against == "ref":
        if ref is None:
            raise RobustirError(f"{type(objective).__name__}(against='ref') needs ref= (the ground truth); "
                                f"for an attack against the model's own output use against='clean_output'")
        return ref
    if objective.against == "target":
        if target is None:
            raise RobustirError(f"{type(objective).__name__}(targeted=True) needs target= (the target image)")
        return target
    if clean_output is None:
        raise RobustirError("internal: the clean output was not computed")
    return clean_output


def as_objective(name: str, **kwargs: object) -> MSE:
    """Build an objective by name ('mse', 'l1', 'cospgd')."""
    table = {"mse": MSE, "l1": L1, "cospgd": CosPGD}
    if name.lower() not in table:
        raise RobustirError(f"unknown objective {name!r}; choose one of {', '.join(table)}")
    return table[name.lower()](**kwargs)  # type: ignore[arg-type]

