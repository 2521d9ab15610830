"""Input validation shared by every public entry point (one clear error per problem)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustir.errors import RobustirError


def check_image(x: object, name: str = "image", *, channels: tuple[int, ...] | None = None,
                value_range: tuple[float, float] | None = (0.0, 1.0), ndim: int = 4) -> Tensor:
    """Check that `x` is a finite float tensor of rank `ndim`, optional channel count and value range; return it."""
    if not isinstance(x, Tensor):
        raise RobustirError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        layout = "(N, C, H, W)" if ndim == 4 else "(C, H, W)" if ndim == 3 else f"rank {ndim}"
        raise RobustirError(f"{name}: expected a {layout} tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise RobustirError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise RobustirError(f"{name}: tensor is empty, shape {tuple(x.shape)}")
    if channels is not None and x.shape[-3] not in channels:
        raise RobustirError(f"{name}: expected {' or '.join(map(str, channels))} channel(s), got {x.shape[-3]} "
                            f"(shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise RobustirError(f"{name}: contains NaN or inf values")
    if value_range is not None:
        lo, hi = value_range
        mn, mx = float(x.min()), float(x.max())
        if mn < lo or mx > hi:
            raise RobustirError(f"{name}: values must lie in [{lo:g}, {hi:g}], got min {mn:.4g}, max {mx:.4g}")
    return x


def check_same_shape(a: Tensor, b: Tensor, name_a: str = "prediction", name_b: str = "reference") -> None:
    """Raise if two tensors differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise RobustirError(f"shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


def check_positive(value: float, name: str, *, allow_zero: bool = False, upper: float | None = None) -> float:
    """Check that a scalar is a finite positive number (optionally <= upper); return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RobustirError(f"{name}: expected a number, got {value!r}") from None
    if math.isnan(v) or math.isinf(v):
        raise RobustirError(f"{name}: expected a finite number, got {v}")
    if v < 0 or (v == 0 and not allow_zero):
        raise RobustirError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {v:g}")
    if upper is not None and v > upper:
        raise RobustirError(f"{name}: expected at most {upper:g}, got {v:g}")
    return v


def parse_fraction(value: object, name: str = "value") -> float:
    """Parse numbers written as `8/255`, `0.03` or ints (as config files and the CLI accept them)."""
    if isinstance(value, bool):
        raise RobustirError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        num, _, den = text.partition("/")
        try:
            n, d = float(num), float(den) if "/" in text else 1.0
        except ValueError:
            n = d = math.nan
        if d == 0:
            raise RobustirError(f"{name}: division by zero in {value!r}")
        if not math.isnan(n) and not math.isnan(d):
            return n / d
    raise RobustirError(f"{name}: expected a number or a fraction like '8/255', got {value!r}")
