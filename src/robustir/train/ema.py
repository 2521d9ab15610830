"""Exponential moving average of the weights (BasicSR's `net_g_ema`, saved as `params_ema`)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps `module`, a copy of the network whose floating-point state is an EMA of the trained one.

    Unlike BasicSR, which averages only parameters, floating-point buffers (BatchNorm statistics) are averaged too,
    so the EMA network of a BN model (DnCNN) is usable as is; integer buffers are copied.
    """

    def __init__(self, net: nn.Module, *, decay: float) -> None:
        """Start from a copy of `net`; `decay` in [0, 1) (BasicSR uses 0.999)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """shadow <- decay·shadow + (1 − decay)·current, for every floating-point tensor of the state."""
        current = net.state_dict()
        for name, shadow in self.module.state_dict().items():
            value = current[name].detach()
            if shadow.is_floating_point():
                shadow.mul_(self.decay).add_(value.to(shadow.dtype), alpha=1.0 - self.decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged state (official parameter names)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averaged state (strict)."""
        self.module.load_state_dict(state, strict=True)
