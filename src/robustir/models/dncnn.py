"""DnCNN (Zhang et al., TIP 2017) and FDnCNN, equal to KAIR's `models/network_dncnn.py` (cszn/KAIR @ fc1732f).

DnCNN predicts the noise and subtracts it (`y - net(y)`); the layer stack is Conv+ReLU, (nb-2) x Conv+BN+ReLU, Conv.
KAIR's released checkpoints (`dncnn_15/25/50.pth`, `dncnn_gray_blind.pth`) have their BatchNorm folded into the convs
and load into `act_mode="R"`; `act_mode="BR"` is the training-time form. FDnCNN is the same stack without the residual,
taking the noise-level map as its last input channel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.layers import check_act_mode, conv_block, flat_sequential
from robustir.models.registry import CallConvention, register_model, register_preset
from robustir.models.restorer import sigma_map


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RobustirError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def plain_stack(in_nc: int, out_nc: int, nc: int, nb: int, act_mode: str, bias: bool = True) -> nn.Module:
    """KAIR's DnCNN body: Conv+act, (nb-2) x Conv+act_mode, Conv; flattened so keys are `<i>.weight`."""
    _check_int(in_nc, "in_nc", 1)
    _check_int(out_nc, "out_nc", 1)
    _check_int(nc, "nc", 1)
    _check_int(nb, "nb", 2)
    check_act_mode(act_mode)
    head = conv_block(in_nc, nc, mode="C" + act_mode[-1], bias=bias)
    body = [conv_block(nc, nc, mode="C" + act_mode, bias=bias) for _ in range(nb - 2)]
    tail = conv_block(nc, out_nc, mode="C", bias=bias)
    return flat_sequential(head, *body, tail)


def check_channels(x: Tensor, expected: int, model: str, what: str = "input") -> None:
    """Raise a clear error when the channel count of `x` does not fit the network."""
    if x.ndim != 4 or x.shape[1] != expected:
        raise RobustirError(f"{model}: {what} must have shape (N, {expected}, H, W), got {tuple(x.shape)}")


@register_model("DnCNN", task="denoise", kair_names=("dncnn",),
                description="DnCNN (Zhang et al. 2017): 17/20-layer residual CNN with BN, blind or fixed-sigma",
                test_spec={"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 4, "act_mode": "BR"})
class DnCNN(nn.Module):
    """DnCNN: `y - model(y)`. Keys `model.<i>.*` as in KAIR (ReLU layers take an index but hold no parameters).

    Args:
        in_nc: input channels (1 gray, 3 colour).
        out_nc: output channels (equal to in_nc for the residual).
        nc: feature width (64).
        nb: number of conv layers (17 for DnCNN-S, 20 for the blind DnCNN-B).
        act_mode: 'BR' (conv+BN+ReLU; training form) or 'R' (BN folded; KAIR's released checkpoints).
    """

    def __init__(self, *, in_nc: int = 1, out_nc: int = 1, nc: int = 64, nb: int = 17, act_mode: str = "BR") -> None:
        super().__init__()
        if in_nc != out_nc:
            raise RobustirError(f"DnCNN: in_nc ({in_nc}) must equal out_nc ({out_nc}) for the residual output")
        self.in_nc = in_nc
        self.image_channels = in_nc
        self.model = plain_stack(in_nc, out_nc, nc, nb, act_mode)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise a `(N, in_nc, H, W)` batch (any H, W)."""
        check_channels(x, self.in_nc, "DnCNN")
        return x - self.model(x)


def _fdncnn_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    assert sigma is not None  # the restorer enforces needs_sigma
    return net(torch.cat((y, sigma_map(sigma, y)), dim=1))


@register_model("FDnCNN", task="denoise", kair_names=("fdncnn",),
                description="FDnCNN (KAIR): DnCNN without residual, noise-level map as extra input channel",
                call=CallConvention(needs_sigma=True, adapter=_fdncnn_adapter),
                test_spec={"type": "FDnCNN", "in_nc": 2, "out_nc": 1, "nc": 8, "nb": 4, "act_mode": "R"})
class FDnCNN(nn.Module):
    """FDnCNN: `model(cat(y, sigma_map))`, no residual, no BN in the released form.

    Args:
        in_nc: image channels + 1 (the noise-level map is the last input channel).
        out_nc: output channels.
        nc: feature width (64).
        nb: number of conv layers (20).
        act_mode: 'R' (released) or 'BR'.
    """

    def __init__(self, *, in_nc: int = 2, out_nc: int = 1, nc: int = 64, nb: int = 20, act_mode: str = "R") -> None:
        super().__init__()
        _check_int(in_nc, "in_nc", 2)
        self.in_nc = in_nc
        self.image_channels = in_nc - 1
        self.model = plain_stack(in_nc, out_nc, nc, nb, act_mode)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise `(N, in_nc, H, W)` = noisy image with its noise-level map (sigma in [0,1] units) appended."""
        check_channels(x, self.in_nc, "FDnCNN", "input (image channels + noise-level map)")
        return self.model(x)


register_preset("dncnn-s15", {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 17, "act_mode": "R"},
                "DnCNN-S sigma 15 (gray, BN folded; loads KAIR dncnn_15.pth)")
register_preset("dncnn-s25", {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 17, "act_mode": "R"},
                "DnCNN-S sigma 25 (gray, BN folded; loads KAIR dncnn_25.pth)")
register_preset("dncnn-s50", {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 17, "act_mode": "R"},
                "DnCNN-S sigma 50 (gray, BN folded; loads KAIR dncnn_50.pth)")
register_preset("dncnn-b", {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 20, "act_mode": "R"},
                "DnCNN-B blind gray, 20 layers (BN folded; loads KAIR dncnn_gray_blind.pth)")
register_preset("dncnn-s25-bn", {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 17, "act_mode": "BR"},
                "DnCNN-S training form with BatchNorm (17 layers; SaoYan checkpoints load via the key map)")
register_preset("dncnn-b-bn", {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 20, "act_mode": "BR"},
                "DnCNN-B training form with BatchNorm (20 layers; SaoYan DnCNN-B loads via the key map)")
register_preset("fdncnn", {"type": "FDnCNN", "in_nc": 2, "out_nc": 1, "nc": 64, "nb": 20, "act_mode": "R"},
                "FDnCNN gray (noise-level map input; loads KAIR fdncnn_gray.pth)")
register_preset("fdncnn-color", {"type": "FDnCNN", "in_nc": 4, "out_nc": 3, "nc": 96, "nb": 20, "act_mode": "R"},
                "FDnCNN colour (KAIR fdncnn_color.pth: nc 96)")
