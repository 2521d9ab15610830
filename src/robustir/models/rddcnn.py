"""RDDCNN / RDDCNN-B (Zhang, Tian et al., "Robust deformed denoising CNN", 2022), equal to hellloxiaotian/RDDCNN
`gray/models_rddcnn.py` (class `DnCNN` there; `RDDCNN_B` here).

A modulated deformable 3x3 conv (Deformable ConvNets v2) + ReLU, (depth-2) x [Conv3x3 + BN(eps 1e-4) + ReLU] with the
12th of them dilated by 2, then a Conv3x3 to the image channels; the output is `x - noise`. The blind RDDCNN-B is the
same network trained on sigma ~ U[0, 55]. `use_bnorm` and `kernel_size` are accepted and ignored, as in the official
class. Released checkpoints come from `nn.DataParallel` (`module.` prefix).

The deformable conv is pure PyTorch with the official parameter layout: `p_conv` predicts 2*k*k offsets, channel n
the row (H) offset and channel k*k+n the column (W) offset of kernel point n = k*ki + kj; `m_conv` predicts the k*k
modulation logits. Samples are bilinear and read zero outside the image, which equals the official zero-pad-and-clamp
scheme.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset

_BN_EPS = 1e-4
_BN_MOMENTUM = 0.95
_DILATED_INDEX = 11  # the loop index (0-based) of the dilated conv among the depth-2 middle layers


def bilinear_gather(x: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Sample `x (B, C, H, W)` bilinearly at fractional pixel positions `py, px (B, *S)`; zero outside the image.

    Returns `(B, C, *S)`. Differentiable in `x` and in the positions (the integer corners are detached).
    """
    b, c, h, w = x.shape
    spatial = py.shape[1:]
    py = py.reshape(b, -1)
    px = px.reshape(b, -1)
    y0 = py.detach().floor()
    x0 = px.detach().floor()
    flat = x.reshape(b, c, h * w)
    out = x.new_zeros(b, c, py.shape[1])
    for dy in (0, 1):
        yy = y0 + dy
        wy = 1.0 - (py - yy).abs()
        for dx in (0, 1):
            xx = x0 + dx
            wx = 1.0 - (px - xx).abs()
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long()
            vals = flat.gather(2, idx.unsqueeze(1).expand(b, c, idx.shape[1]))
            out = out + vals * (wy * wx * inside.to(x.dtype)).unsqueeze(1)
    return out.reshape(b, c, *spatial)


class DeformConv2d(nn.Module):
    """Modulated deformable convolution with the RDDCNN parameter names (`conv`, `p_conv`, `m_conv`).

    Args:
        inc: input channels.
        outc: output channels.
        kernel_size: k (the sampling grid is k x k).
        padding: zero padding of the sampled image (the official code assumes `padding == (k - 1) // 2`).
        stride: stride of the offset/modulation convs and of the sampling grid.
        bias: bias of the main conv.
        modulation: predict a sigmoid modulation mask per kernel point (DCNv2).
    """

    def __init__(self, *, inc: int, outc: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 bias: bool = False, modulation: bool = False) -> None:
        super().__init__()
        if padding < 1:
            raise RobustirError(f"DeformConv2d: padding must be >= 1 (the official code samples a zero-padded "
                                f"image), got {padding}")
        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.modulation = modulation
        # The official layer gathers k*k samples into a (k*H, k*W) mosaic and reduces it with a stride-k conv, so the
        # main conv's weight is an ordinary (outc, inc, k, k) kernel.
        self.conv = nn.Conv2d(inc, outc, kernel_size, stride=kernel_size, bias=bias)
        n = kernel_size * kernel_size
        self.p_conv = nn.Conv2d(inc, 2 * n, 3, padding=1, stride=stride)
        nn.init.zeros_(self.p_conv.weight)
        if modulation:
            self.m_conv = nn.Conv2d(inc, n, 3, padding=1, stride=stride)
            nn.init.zeros_(self.m_conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Deformable conv of `(B, inc, H, W)` -> `(B, outc, H', W')`."""
        offset = self.p_conv(x)
        k = self.kernel_size
        n = k * k
        b, _, ho, wo = offset.shape
        r = (k - 1) // 2
        grid = torch.arange(-r, k - r, device=x.device, dtype=x.dtype)
        # kernel point n = k*ki + kj sits at (grid[ki], grid[kj]) relative to the output pixel's centre
        ky = grid.repeat_interleave(k).view(1, n, 1, 1)
        kx = grid.repeat(k).view(1, n, 1, 1)
        # centre of output pixel (i, j) in unpadded input coordinates (official: 1 + i*stride in padded coordinates)
        cy = (torch.arange(ho, device=x.device, dtype=x.dtype) * self.stride + 1 - self.padding).view(1, 1, ho, 1)
        cx = (torch.arange(wo, device=x.device, dtype=x.dtype) * self.stride + 1 - self.padding).view(1, 1, 1, wo)
        py = cy + ky + offset[:, :n]
        px = cx + kx + offset[:, n:]
        samples = bilinear_gather(x, py, px)  # (B, C, n, H', W')
        if self.modulation:
            samples = samples * torch.sigmoid(self.m_conv(x)).unsqueeze(1)
        weight = self.conv.weight.reshape(self.conv.out_channels, -1, n)
        out = torch.einsum("bcnhw,ocn->bohw", samples, weight)
        if self.conv.bias is not None:
            out = out + self.conv.bias.view(1, -1, 1, 1)
        return out


@register_model("RDDCNN_B", task="denoise",
                description="RDDCNN / RDDCNN-B (2022): deformable-conv + dilated DnCNN-style residual denoiser (blind)",
                call=CallConvention(),
                test_spec={"type": "RDDCNN_B", "depth": 14, "n_channels": 8, "image_channels": 1})
class RDDCNN_B(nn.Module):  # noqa: N801 - the registry type name fixed by the parity fixtures
    """RDDCNN (-B): `x - dncnn(x)`; keys `dncnn.<i>.*` as in the official class.

    Args:
        depth: number of conv layers (17); the 12th middle conv is dilated when depth >= 14.
        n_channels: feature width (64).
        image_channels: image channels (1 gray; the official colour model uses 3).
        use_bnorm: accepted and ignored (as in the official code; BN is always used).
        kernel_size: accepted and ignored (3 is hard-coded, as in the official code).
    """

    def __init__(self, *, depth: int = 17, n_channels: int = 64, image_channels: int = 1, use_bnorm: bool = True,
                 kernel_size: int = 3) -> None:
        super().__init__()
        for name, value, low in (("depth", depth, 2), ("n_channels", n_channels, 1),
                                 ("image_channels", image_channels, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RobustirError(f"RDDCNN_B: {name} must be an integer >= {low}, got {value!r}")
        self.image_channels = image_channels
        layers: list[nn.Module] = [DeformConv2d(inc=image_channels, outc=n_channels, kernel_size=3, padding=1,
                                                bias=False, modulation=True), nn.ReLU()]
        for i in range(depth - 2):
            dil = 2 if i == _DILATED_INDEX else 1
            layers += [nn.Conv2d(n_channels, n_channels, 3, padding=dil, dilation=dil, bias=False),
                       nn.BatchNorm2d(n_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM), nn.ReLU()]
        layers.append(nn.Conv2d(n_channels, image_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Official init runs over every Conv2d, including the offset/modulation convs (overriding their zero init).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise a `(N, image_channels, H, W)` batch (any H, W); no clipping."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise RobustirError(f"RDDCNN_B: input must have shape (N, {self.image_channels}, H, W), "
                                f"got {tuple(x.shape)}")
        return x - self.dncnn(x)


register_preset("rddcnn-b", {"type": "RDDCNN_B", "depth": 17, "n_channels": 64, "image_channels": 1},
                "RDDCNN-B gray blind denoiser (released blind.pth; 556,302 parameters)")
