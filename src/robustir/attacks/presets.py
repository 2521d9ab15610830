"""Named attacks with the papers' settings: `preset("pgd", eps=8/255, steps=10)`.

Every preset is a small function whose docstring cites the paper, norm, defaults and shapes; keyword overrides are
checked against its signature. `*_parity` presets use the original code's ε = 0.03 instead of the exact 8/255.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from robustir.attacks.engine import Attack
from robustir.attacks.objectives import CosPGD, MSE, as_objective
from robustir.attacks.threat import L2Ball, LinfBall, ValueRange, ZeroMean
from robustir.attacks.updates import AdamStep, L2Step, SignStep
from robustir.errors import RobustirError

Eps = float | Tensor
_PRESETS: dict[str, Callable[..., Attack]] = {}
PARITY_EPS = 0.03  # the CosPGD / 000 group's scripts write 8/255 as 0.03 (METHODS.md §1)


def _register(name: str) -> Callable[[Callable[..., Attack]], Callable[..., Attack]]:
    def deco(fn: Callable[..., Attack]) -> Callable[..., Attack]:
        _PRESETS[name] = fn
        return fn
    return deco


def _objective(name: str, against: str, targeted: bool, clamp_output: bool, region: Tensor | None) -> MSE:
    if targeted:
        against = "target"
    return as_objective(name, against=against, targeted=targeted, clamp_output=clamp_output, region=region)


def _common(kw: dict[str, Any]) -> dict[str, Any]:
    """Engine options every preset accepts."""
    keys = ("generator", "track_best", "eval_mode", "checkpoint", "amp_dtype", "channels_last", "compile",
            "cond_threats")
    return {k: kw[k] for k in keys if k in kw}


@_register("fgsm")
def fgsm(*, eps: Eps = 8 / 255, objective: str = "mse", against: str = "ref", targeted: bool = False,
         value_range: ValueRange = (0.0, 1.0), clamp_output: bool = False, region: Tensor | None = None,
         **engine: Any) -> Attack:
    """FGSM (Goodfellow et al. 2015; seed 000 eq. 7): one sign step of size ε, no random start, L-inf.

    Defaults: ε = 8/255, MSE against the ground truth `ref` (000's FGSM adversarial training crafts with the training
    loss instead: pass objective='l1'). Input `(N, C, H, W)` in [0,1].
    """
    return Attack(LinfBall(eps, value_range=value_range), _objective(objective, against, targeted, clamp_output, region),
                  SignStep(eps), 1, False, **_common(engine))


@_register("fgsm_parity")
def fgsm_parity(*, eps: Eps = PARITY_EPS, **kw: Any) -> Attack:
    """FGSM with the 000 group's config values (`epsilon: 0.03, alpha: 0.03, iterations: 1`)."""
    return fgsm(eps=eps, **kw)


@_register("pgd")
def pgd(*, eps: Eps = 8 / 255, alpha: Eps = 0.01, steps: int = 10, random_start: bool | str = True,
        objective: str = "mse", against: str = "ref", targeted: bool = False, value_range: ValueRange = (0.0, 1.0),
        clamp_output: bool = False, region: Tensor | None = None, **engine: Any) -> Attack:
    """L-inf PGD (Madry et al. 2018) as in seed 000 §2.2 / CosPGD Alg. 1: uniform random start, sign steps.

    Defaults: ε = 8/255, α = 0.01, T = 10 (000 uses T ∈ {5, 10, 20}), MSE against the ground truth `ref`.
    Input `(N, C, H, W)` in [0,1]; `eps`/`alpha` may be `(N,)` tensors (one budget per sample).
    """
    return Attack(LinfBall(eps, value_range=value_range), _objective(objective, against, targeted, clamp_output, region),
                  SignStep(alpha), steps, random_start, **_common(engine))


@_register("pgd_parity")
def pgd_parity(*, eps: Eps = PARITY_EPS, **kw: Any) -> Attack:
    """PGD with the freq-restormer `test.py` defaults (`--epsilon 0.03 --alpha 0.01`)."""
    return pgd(eps=eps, **kw)


@_register("pgd_l2")
def pgd_l2(*, eps: Eps = 8 / 255, alpha: Eps = 2 / 255, steps: int = 10, random_start: bool | str = True,
           rms: bool = True, objective: str = "mse", against: str = "ref", targeted: bool = False,
           value_range: ValueRange = (0.0, 1.0), clamp_output: bool = False, region: Tensor | None = None,
           **engine: Any) -> Attack:
    """L2 PGD as in the `cospgd` package (`init_l2`, `step_l2`; METHODS.md §2.3): normalised steps, shrink-only ball.

    Defaults: `rms=True`, so ε and α are per-entry budgets and the radius/step are ε·√d, α·√d (d = C·H·W); with
    `rms=False` they are absolute L2 norms. ε = 8/255, α = 2/255, T = 10, MSE against `ref`.
    """
    return Attack(L2Ball(eps, value_range=value_range, rms=rms),
                  _objective(objective, against, targeted, clamp_output, region),
                  L2Step(alpha, rms=rms), steps, random_start, **_common(engine))


@_register("cospgd")
def cospgd(*, eps: Eps = 8 / 255, alpha: Eps = 0.01, steps: int = 10, random_start: bool | str = True,
           against: str = "ref", targeted: bool = False, value_range: ValueRange = (0.0, 1.0),
           clamp_output: bool = False, region: Tensor | None = None, **engine: Any) -> Attack:
    """CosPGD (Agnihotri et al., ICML 2024; seed 000 §2.4): PGD on the cosine-weighted MSE, L-inf.

    Defaults: ε = 8/255, α = 0.01, T = 10, uniform random start, reference = ground truth `ref`. Exactly PGD on
    one-channel images (a warning says so). Input `(N, C, H, W)` in [0,1].
    """
    if targeted:
        against = "target"
    obj = CosPGD(against=against, targeted=targeted, clamp_output=clamp_output, region=region)  # type: ignore[arg-type]
    return Attack(LinfBall(eps, value_range=value_range), obj, SignStep(alpha), steps, random_start,
                  **_common(engine))


@_register("cospgd_parity")
def cospgd_parity(*, eps: Eps = PARITY_EPS, **kw: Any) -> Attack:
    """CosPGD with the package/scripts' defaults (`--epsilon 0.03 --alpha 0.01`)."""
    return cospgd(eps=eps, **kw)


@_register("adam_pgd")
def adam_pgd(*, eps: Eps = 8 / 255, lr: float = 1e-3, steps: int | None = None, targeted: bool = False,
             random_start: bool | str = "normal", objective: str = "mse", value_range: ValueRange = (0.0, 1.0),
             region: Tensor | None = None, **engine: Any) -> Attack:
    """PGD with Adam updates (Gandikota, Chandramouli, Moeller, ICIP 2022; seed 001 §3.1–3.2), L-inf.

    Untargeted: maximise ‖N(y+δ) − N(y)‖² against the model's own clean output (needs the random start);
    targeted: minimise ‖N(y+δ) − x̃‖² to `target=` (optionally only inside `region`).
    Defaults: ε = 8/255 (001 uses {4, 8, 12}/255), Adam lr 1e-3 with betas (0.9, 0.999), 250 steps untargeted /
    500 targeted, start δ = clip(N(0, 1), ±ε) (the first author's code), projection after every Adam step with the
    moments kept. Input `(N, C, H, W)` in [0,1].
    """
    n_steps = steps if steps is not None else (500 if targeted else 250)
    obj = _objective(objective, "clean_output", targeted, False, region)
    return Attack(LinfBall(eps, value_range=value_range), obj, AdamStep(lr), n_steps, random_start,
                  **_common(engine))


@_register("adam_pgd_targeted")
def adam_pgd_targeted(**kw: Any) -> Attack:
    """Targeted Adam-PGD (seed 001): `adam_pgd(targeted=True)`, 500 steps; pass `target=` when calling."""
    return adam_pgd(targeted=True, **kw)


@_register("denoising_pgd_linf")
def denoising_pgd_linf(*, eps: Eps = 1 / 255, alpha: Eps = 0.25 / 255, steps: int = 10,
                       random_start: bool | str = True, objective: str = "mse", **engine: Any) -> Attack:
    """Denoising-PGD, L-inf (Ning, Li, Guo 2023, as used in seed 002 §2.6; METHODS.md §4.1).

    Perturbs the *noisy* observation y = x + n (pass it as `x`), maximising the MSE of the denoiser output to the
    clean image (`ref=`); no [0,1] clip. Defaults (calibrated, the paper's numbers were lost): ε = 1/255,
    α = 0.25/255, T = 10, uniform random start. Input `(N, C, H, W)` unclipped.
    """
    return Attack(LinfBall(eps, value_range=None), as_objective(objective, against="ref"), SignStep(alpha), steps,
                  random_start, **_common(engine))


@_register("denoising_pgd_l2")
def denoising_pgd_l2(*, eps: Eps = 1 / 255, alpha: Eps = 0.25 / 255, steps: int = 10,
                     random_start: bool | str = True, objective: str = "mse", **engine: Any) -> Attack:
    """L2-Denoising-PGD (seed 002 §2.6; METHODS.md §4.1): ε₂ = ε·√d and α₂ = α·√d (same RMS budget as L-inf).

    Same objective and inputs as `denoising_pgd_linf`; normalised gradient steps and an L2-ball projection, no clip.
    """
    return Attack(L2Ball(eps, value_range=None, rms=True), as_objective(objective, against="ref"),
                  L2Step(alpha, rms=True), steps, random_start, **_common(engine))


@_register("obsatk")
def obsatk(*, eps: Eps = 1 / 255, alpha: Eps = 0.25 / 255, steps: int = 10, random_start: bool | str = True,
           **engine: Any) -> Attack:
    """ObsAtk-style zero-mean L2 attack on a noisy observation (Yan et al., IJCAI 2022; cited by seed 000).

    δ is projected onto the zero-mean hyperplane and the L2 ball of radius ε·√d; no clip. Defaults as Denoising-PGD.
    """
    return Attack(ZeroMean(L2Ball(eps, value_range=None, rms=True)), MSE(against="ref"), L2Step(alpha, rms=True),
                  steps, random_start, **_common(engine))


def list_presets() -> dict[str, str]:
    """Preset names with the first line of their docstring."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in _PRESETS.items()}


def preset(name: str, **overrides: Any) -> Attack:
    """Build a named attack; overrides must be keywords of that preset (e.g. `eps`, `alpha`, `steps`, `generator`)."""
    key = name.lower().replace("-", "_")
    if key not in _PRESETS:
        raise RobustirError(f"unknown attack {name!r}; presets: {', '.join(sorted(_PRESETS))}")
    fn = _PRESETS[key]
    params = inspect.signature(fn).parameters
    named = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    engine_keys = {"generator", "track_best", "eval_mode", "checkpoint", "amp_dtype", "channels_last", "compile",
                   "cond_threats"}
    inner = set()
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        inner = engine_keys
        # thin wrappers (parity/targeted) forward to a base preset: accept its keywords too
        for base in (fgsm, pgd, cospgd, adam_pgd):
            if fn.__name__.startswith(base.__name__):
                inner |= {n for n, p in inspect.signature(base).parameters.items() if p.kind == p.KEYWORD_ONLY}
    bad = sorted(set(overrides) - named - inner)
    if bad:
        raise RobustirError(f"attack {name!r}: unknown option(s) {bad}; valid: {', '.join(sorted(named | inner))}")
    if "amp_dtype" in overrides and isinstance(overrides["amp_dtype"], str):
        overrides["amp_dtype"] = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                                  "float16": torch.float16}.get(overrides["amp_dtype"], overrides["amp_dtype"])
    return fn(**overrides)
