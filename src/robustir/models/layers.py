"""Small building blocks shared by the KAIR-family networks (DnCNN, FFDNet, DRUNet).

KAIR builds its networks from a mode string ("CBR" = Conv, BatchNorm, ReLU) and flattens nested `nn.Sequential`s, so
parameter names such as `model.3.running_var` or `m_down1.4.weight` depend on exactly how the layers are flattened.
These helpers reproduce that layout, so official checkpoints load strictly; the code is our own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError

# KAIR's BatchNorm settings (not PyTorch's defaults): they matter for eval-mode outputs (eps) and training (momentum).
KAIR_BN_EPS = 1e-4
KAIR_BN_MOMENTUM = 0.9


def flat_sequential(*modules: nn.Module) -> nn.Module:
    """Chain modules, splicing in the children of any `nn.Sequential`; a single module is returned as is (KAIR rule)."""
    if len(modules) == 1:
        return modules[0]
    flat: list[nn.Module] = []
    for m in modules:
        flat.extend(m.children() if isinstance(m, nn.Sequential) else [m])
    return nn.Sequential(*flat)


def conv_block(in_ch: int, out_ch: int, *, kernel_size: int = 3, stride: int = 1, padding: int = 1,
               bias: bool = True, mode: str = "CBR", negative_slope: float = 0.2) -> nn.Module:
    """Layers named by a KAIR mode string: C conv, T transposed conv, B BatchNorm, I InstanceNorm, R/r ReLU,
    L/l LeakyReLU, 2/3/4 PixelShuffle, U/u/v nearest upsampling x2/x3/x4, M max-pool, A average-pool."""
    layers: list[nn.Module] = []
    for t in mode:
        if t == "C":
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias))
        elif t == "T":
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias))
        elif t == "B":
            layers.append(nn.BatchNorm2d(out_ch, eps=KAIR_BN_EPS, momentum=KAIR_BN_MOMENTUM, affine=True))
        elif t == "I":
            layers.append(nn.InstanceNorm2d(out_ch, affine=True))
        elif t in "Rr":
            # never in-place: attacks need the pre-activation tensors intact for the backward pass
            layers.append(nn.ReLU())
        elif t in "Ll":
            layers.append(nn.LeakyReLU(negative_slope=negative_slope))
        elif t in "234":
            layers.append(nn.PixelShuffle(int(t)))
        elif t in "Uuv":
            layers.append(nn.Upsample(scale_factor={"U": 2, "u": 3, "v": 4}[t], mode="nearest"))
        elif t == "M":
            layers.append(nn.MaxPool2d(kernel_size=kernel_size, stride=stride, padding=0))
        elif t == "A":
            layers.append(nn.AvgPool2d(kernel_size=kernel_size, stride=stride, padding=0))
        else:
            raise RobustirError(f"unknown layer code {t!r} in mode {mode!r}; valid codes: C T B I R r L l 2 3 4 U u v "
                                f"M A")
    return flat_sequential(*layers)


def check_act_mode(act_mode: str, name: str = "act_mode") -> str:
    """Validate a KAIR activation mode such as 'R', 'BR', 'L' or 'BL'."""
    if not isinstance(act_mode, str) or not act_mode or any(c not in "BIRrLl" for c in act_mode) \
            or act_mode[-1] not in "RrLl":
        raise RobustirError(f"{name}: expected a KAIR activation mode ending in an activation, e.g. 'R' or 'BR', "
                            f"got {act_mode!r}")
    return act_mode


class ResBlock(nn.Module):
    """KAIR residual block `x + res(x)`, `res` built from a mode string such as 'CRC' (keys `res.0`, `res.2`)."""

    def __init__(self, channels: int, *, bias: bool = True, mode: str = "CRC", negative_slope: float = 0.2) -> None:
        super().__init__()
        if mode[0] in "RL":
            mode = mode[0].lower() + mode[1:]
        self.res = conv_block(channels, channels, bias=bias, mode=mode, negative_slope=negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        """Residual update."""
        return x + self.res(x)


def downsample(in_ch: int, out_ch: int, *, mode: str, bias: bool) -> nn.Module:
    """x2 downsampling as KAIR's `downsample_{strideconv,avgpool,maxpool}` builds it (same layer layout)."""
    if mode == "strideconv":
        return conv_block(in_ch, out_ch, kernel_size=2, stride=2, padding=0, bias=bias, mode="C")
    if mode == "avgpool":
        return flat_sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                               conv_block(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=bias, mode="C"))
    if mode == "maxpool":
        # KAIR's maxpool variant builds its conv with padding 0 (a quirk kept for checkpoint/shape compatibility)
        return flat_sequential(nn.MaxPool2d(kernel_size=2, stride=2, padding=0),
                               conv_block(in_ch, out_ch, kernel_size=3, stride=1, padding=0, bias=bias, mode="C"))
    raise RobustirError(f"downsample_mode: expected 'strideconv', 'avgpool' or 'maxpool', got {mode!r}")


def upsample(in_ch: int, out_ch: int, *, mode: str, bias: bool) -> nn.Module:
    """x2 upsampling as KAIR's `upsample_{convtranspose,pixelshuffle,upconv}` builds it (same layer layout)."""
    if mode == "convtranspose":
        return conv_block(in_ch, out_ch, kernel_size=2, stride=2, padding=0, bias=bias, mode="T")
    if mode == "pixelshuffle":
        return conv_block(in_ch, out_ch * 4, kernel_size=3, stride=1, padding=1, bias=bias, mode="C2")
    if mode == "upconv":
        return conv_block(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=bias, mode="UC")
    raise RobustirError(f"upsample_mode: expected 'convtranspose', 'pixelshuffle' or 'upconv', got {mode!r}")


def pixel_unshuffle(x: Tensor, factor: int) -> Tensor:
    """Inverse of PixelShuffle; channel index = c*factor^2 + dy*factor + dx (KAIR and `F.pixel_unshuffle` order)."""
    return torch.nn.functional.pixel_unshuffle(x, factor)
