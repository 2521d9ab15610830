"""DRUNet (Zhang et al., TPAMI 2021 "Plug-and-Play Image Restoration with Deep Denoiser Prior"), equal to KAIR's
`models/network_unet.py` class `UNetRes` (cszn/KAIR @ fc1732f; the same network as cszn/DPIR, where bias=False is
hard-coded).

Four scales with `nb` residual blocks each, strided-conv down, transposed-conv up, skips ADDED (not concatenated), no
global residual. The noise-level map is the last input channel. The network itself does not pad: H and W must be
multiples of 8; the restorer replicate-pads (as DPIR does) and crops back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.dncnn import check_channels
from robustir.models.layers import ResBlock, check_act_mode, conv_block, downsample, flat_sequential, upsample
from robustir.models.registry import CallConvention, register_model, register_preset
from robustir.models.restorer import sigma_map

DOWN_FACTOR = 8  # three x2 downsamplings


def drunet_input(y: Tensor, sigma: Tensor) -> Tensor:
    """DRUNet's input: the image with its constant noise-level map `(N,)` (in [0,1] units) as the last channel."""
    return torch.cat((y, sigma_map(sigma, y)), dim=1)


def _drunet_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    assert sigma is not None  # the restorer enforces needs_sigma
    return net(drunet_input(y, sigma))


@register_model("UNetRes", task="denoise", kair_names=("unetres", "drunet"),
                description="DRUNet (KAIR UNetRes, DPIR denoiser prior): residual U-Net with noise-level map input",
                call=CallConvention(pad_multiple=DOWN_FACTOR, pad_mode="replicate", needs_sigma=True,
                                    adapter=_drunet_adapter),
                test_spec={"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 8, 8, 16], "nb": 1, "bias": False})
class UNetRes(nn.Module):
    """DRUNet: `forward(x)` with `x = cat(image, sigma_map)`, H and W multiples of 8.

    Args:
        in_nc: image channels + 1 (noise-level map).
        out_nc: output channels.
        nc: widths of the four scales ([64, 128, 256, 512]).
        nb: residual blocks per scale (4).
        act_mode: activation inside the residual blocks ('R').
        downsample_mode: 'strideconv' | 'avgpool' | 'maxpool'.
        upsample_mode: 'convtranspose' | 'pixelshuffle' | 'upconv'.
        bias: conv biases (KAIR default True; the released DRUNet weights are bias-free: False).
    """

    def __init__(self, *, in_nc: int = 3, out_nc: int = 3, nc: list[int] | tuple[int, ...] = (64, 128, 256, 512),
                 nb: int = 4, act_mode: str = "R", downsample_mode: str = "strideconv",
                 upsample_mode: str = "convtranspose", bias: bool = True) -> None:
        super().__init__()
        if not isinstance(nc, (list, tuple)) or len(nc) != 4 or not all(isinstance(c, int) and c > 0 for c in nc):
            raise RobustirError(f"UNetRes: nc must be four positive integers (one width per scale), got {nc!r}")
        if isinstance(nb, bool) or not isinstance(nb, int) or nb < 0:
            raise RobustirError(f"UNetRes: nb must be a non-negative integer, got {nb!r}")
        if isinstance(in_nc, bool) or not isinstance(in_nc, int) or in_nc < 2:
            raise RobustirError(f"UNetRes: in_nc must be image channels + 1 (>= 2), got {in_nc!r}")
        check_act_mode(act_mode)
        self.in_nc = in_nc
        self.image_channels = in_nc - 1
        mode = "C" + act_mode + "C"

        def blocks(c: int) -> list[nn.Module]:
            return [ResBlock(c, bias=bias, mode=mode) for _ in range(nb)]

        self.m_head = conv_block(in_nc, nc[0], bias=bias, mode="C")
        self.m_down1 = flat_sequential(*blocks(nc[0]), downsample(nc[0], nc[1], mode=downsample_mode, bias=bias))
        self.m_down2 = flat_sequential(*blocks(nc[1]), downsample(nc[1], nc[2], mode=downsample_mode, bias=bias))
        self.m_down3 = flat_sequential(*blocks(nc[2]), downsample(nc[2], nc[3], mode=downsample_mode, bias=bias))
        self.m_body = flat_sequential(*blocks(nc[3])) if nb > 0 else nn.Identity()
        self.m_up3 = flat_sequential(upsample(nc[3], nc[2], mode=upsample_mode, bias=bias), *blocks(nc[2]))
        self.m_up2 = flat_sequential(upsample(nc[2], nc[1], mode=upsample_mode, bias=bias), *blocks(nc[1]))
        self.m_up1 = flat_sequential(upsample(nc[1], nc[0], mode=upsample_mode, bias=bias), *blocks(nc[0]))
        self.m_tail = conv_block(nc[0], out_nc, bias=bias, mode="C")

    def forward(self, x0: Tensor) -> Tensor:
        """Denoise `(N, in_nc, H, W)` = image + noise-level map, H and W multiples of 8."""
        check_channels(x0, self.in_nc, "UNetRes", "input (image channels + noise-level map)")
        if x0.shape[-2] % DOWN_FACTOR or x0.shape[-1] % DOWN_FACTOR:
            raise RobustirError(f"UNetRes: H and W must be multiples of {DOWN_FACTOR}, got {tuple(x0.shape[-2:])}; "
                                f"use robustir.models.restorer(...) to pad and crop automatically")
        x1 = self.m_head(x0)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        x = self.m_body(x4)
        x = self.m_up3(x + x4)
        x = self.m_up2(x + x3)
        x = self.m_up1(x + x2)
        return self.m_tail(x + x1)


_DRUNET = {"nc": [64, 128, 256, 512], "nb": 4, "act_mode": "R", "downsample_mode": "strideconv",
           "upsample_mode": "convtranspose", "bias": False}
register_preset("drunet-gray", {"type": "UNetRes", "in_nc": 2, "out_nc": 1, **_DRUNET},
                "DRUNet gray (DPIR drunet_gray.pth; bias-free)")
register_preset("drunet-color", {"type": "UNetRes", "in_nc": 4, "out_nc": 3, **_DRUNET},
                "DRUNet colour (DPIR drunet_color.pth; bias-free)")
