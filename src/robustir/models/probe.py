"""Asking a restorer, before a long job writes anything, whether it can take the job's images: one forward each."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError


_CHANNEL_KEY = re.compile(r"^(in_?nc|in_?chans?|inp?_channels|n_?colou?rs|image_channels|img_channels?|n_channels|"
                          r"channels|colors)$")


def channel_keys(spec: Mapping[str, Any]) -> list[str]:
    """Keys of a model spec that set its input channel count (in_nc, in_chans, n_colors, inp_channels, ...)."""
    return [k for k in spec if _CHANNEL_KEY.match(str(k))]


def probe_condition(model: nn.Module, device: torch.device | str | None = None) -> dict[str, Any]:
    """The sigma / kernel a probe forward needs: 25/255 and a 5x5 box kernel, only where the model needs them."""
    cond: dict[str, Any] = {}
    if getattr(model, "needs_sigma", False):
        cond["sigma"] = 25 / 255
    if getattr(model, "needs_kernel", False):
        cond["kernel"] = torch.full((5, 5), 1 / 25, device=device)
    return cond


def run_once(model: nn.Module, x: Tensor, **cond: Any) -> Tensor:
    """The model's output on `x`, leaving no trace: no gradients, eval mode, RNG streams and batch-norm stats unmoved.

    A failure torch raises for the input (a convolution given the wrong channels, an image too small to pad) becomes a
    RobustirError with its first line; running out of GPU memory is not the input's fault and is raised as it is.
    """
    was_training = model.training
    # a probe must not shift seeded streams (bit-identical resume of training) nor update running statistics
    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model.eval()
        try:
            return model(x, **cond)
        except (torch.cuda.OutOfMemoryError, RobustirError):
            raise
        except RuntimeError as exc:
            raise RobustirError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        finally:
            model.train(was_training)


def channel_errors(model: nn.Module, *, size: int = 64, device: torch.device | str | None = None,
                   cond: dict[str, Any] | None = None,
                   channels: tuple[int, ...] = (1, 3)) -> dict[int, Exception | None]:
    """For each channel count, None when a blank `size` x `size` image of it runs through the model, else the error.

    `cond` defaults to `probe_condition(model)`. Only a count that fails while another runs is a channel mismatch:
    when every count fails the cause is something else (size, missing weights), which the caller's own probe reports.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cond = probe_condition(model, device) if cond is None else cond
    out: dict[int, Exception | None] = {}
    for c in channels:
        try:
            run_once(model, torch.full((1, c, size, size), 0.5, device=device), **cond)
            out[c] = None
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is recorded; the caller decides what it means
            out[c] = exc
    return out


def channel_mismatch(model: nn.Module, have: int, **kwargs: Any) -> int | None:
    """A channel count the model takes when `have` channels fail and that one runs, else None (see channel_errors)."""
    errors = channel_errors(model, channels=tuple(dict.fromkeys((have, 1, 3))), **kwargs)
    works = [c for c, e in errors.items() if e is None]
    return works[0] if errors[have] is not None and works else None
