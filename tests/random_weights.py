"""Test helper: networks whose every weight is random, as after training (zero-initialised scales included)."""

from __future__ import annotations

import torch

from robustir.models import build


def trained_like(spec: dict, seed: int = 0) -> torch.nn.Module:
    """`build(spec)` with every parameter (the residual scales included) drawn at random, as after training."""
    torch.manual_seed(seed)
    net = build(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3 / max(1, p.shape[1] if p.dim() > 1 else 1) ** 0.5)
    return net
