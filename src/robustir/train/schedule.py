"""Learning-rate schedules as pure functions of the step (resuming needs only the step)."""

from __future__ import annotations

import math

from robustir.train.config import ScheduleConfig


def lr_at(step: int, *, base_lr: float, schedule: ScheduleConfig, total_steps: int) -> float:
    """The learning rate for 0-based `step`.

    - constant: `base_lr`.
    - multistep: `base_lr · gamma^(number of milestones <= step)` (torch MultiStepLR).
    - cosine without periods: from `base_lr` to `eta_min` over the run (torch CosineAnnealingLR, T_max = steps).
    - cosine with periods: BasicSR's CosineAnnealingRestartCyclicLR; each period restarts at
      `restart_weights[i]·base_lr` and anneals to `eta_mins[i]` (Restormer: eta_min = lr in the first period keeps the
      rate constant, then cosine to 1e-6).
    A linear warm-up over `warmup` steps multiplies the result.
    """
    s = schedule
    if s.type == "multistep":
        lr = base_lr * s.gamma ** sum(1 for m in s.milestones if step >= m)
    elif s.type == "cosine" and s.periods:
        begin = 0
        lr = s.eta_mins[-1] if s.eta_mins else s.eta_min
        for i, period in enumerate(s.periods):
            if step < begin + period:
                eta = s.eta_mins[i] if s.eta_mins else s.eta_min
                weight = s.restart_weights[i] if s.restart_weights else 1.0
                lr = eta + weight * 0.5 * (base_lr - eta) * (1 + math.cos(math.pi * (step - begin) / period))
                break
            begin += period
    elif s.type == "cosine":
        t = min(step, total_steps) / max(total_steps, 1)
        lr = s.eta_min + 0.5 * (base_lr - s.eta_min) * (1 + math.cos(math.pi * t))
    else:
        lr = base_lr
    if s.warmup > 0 and step < s.warmup:
        lr *= (step + 1) / s.warmup
    return lr
