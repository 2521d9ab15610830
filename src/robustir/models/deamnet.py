"""DeamNet (Ren et al., "Adaptive consistency prior based deep network for image denoising", CVPR 2021), equal to
chaoren88/DeamNet `DeamNet.py` (class `Deam`; `DeamNet` here).

A feature transform, then the same NLO sub-network (a 4-level attention U-Net, `net2`) applied four times with shared
weights; after each pass a DEAM gate `delta = Weight(x_k, y)` blends the result with the transformed input,
`x_k = (1 - delta) * x_k + delta * y`; an inverse transform maps back to the image. The official class hard-codes
64 channels; `channels` exposes that width (default 64). `net2.conv_dila1/2/3` and `net2.cat1` exist in the official
state dict but are never used by forward; they are kept (at width `channels`) so checkpoints load strictly.
H and W must be multiples of 16; the uniform restorer reflect-pads to that (per dimension; the official test script
uses the height's pad for the width too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset

_REDUCTION = 16


class _Conv(nn.Module):
    """Conv with 'same' zero padding and Xavier-normal init (official `ConvLayer1`; key `conv2d.*`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2, stride=stride)
        nn.init.xavier_normal_(self.conv2d.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the conv."""
        return self.conv2d(x)


class _ConvReLU(nn.Module):
    """Conv + ReLU (official `ConvLayer`; keys `block.0.*`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2,
                                             stride=stride), nn.ReLU())
        nn.init.xavier_normal_(self.block[0].weight)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv and ReLU."""
        return self.block(x)


class _UpConvReLU(nn.Module):
    """Nearest x2 upsampling then Conv + ReLU (official `UpsampleConvLayer`; keys `conv2d.block.0.*`)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv2d = _ConvReLU(ch, ch, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample by 2 (nearest) and convolve."""
        return self.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Encoder(nn.Module):
    """`n` Conv+ReLU layers, the last one with stride 2; returns (skip before the stride, downsampled)."""

    def __init__(self, ch: int, n: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[_ConvReLU(ch, ch, 3, stride=1 if i < n - 1 else 2) for i in range(n)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (skip features, stride-2 features)."""
        for layer in self.body[:-1]:
            x = layer(x)
        return x, self.body[-1](x)


class _UpFuse(nn.Module):
    """Fuse the gated skip `x` with the upsampled deeper features `y` (official `upsample1`)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = _ConvReLU(ch, ch, 3)
        self.ConvTranspose = _UpConvReLU(ch)  # noqa: N815 - official key name
        self.cat = _Conv(2 * ch, ch, 1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """`cat(conv1(x), up(y))` through a 1x1 conv."""
        return self.cat(torch.cat((self.conv1(x), self.ConvTranspose(y)), dim=1))


class _Decoder(nn.Module):
    """Up-fusion followed by `n` Conv+ReLU layers (official `Decoding_block2`)."""

    def __init__(self, ch: int, n: int) -> None:
        super().__init__()
        self.upsample = _UpFuse(ch)
        self.body = nn.Sequential(*[_ConvReLU(ch, ch, 3) for _ in range(n)])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Decode from skip `x` and deeper features `y`."""
        return self.body(self.upsample(x, y))


def _squeeze_gate(ch: int) -> nn.Sequential:
    """3x3 conv to ch/16, ReLU, 3x3 conv back, sigmoid (keys `0.conv2d.*`, `2.conv2d.*`)."""
    return nn.Sequential(_Conv(ch, ch // _REDUCTION, 3), nn.ReLU(), _Conv(ch // _REDUCTION, ch, 3), nn.Sigmoid())


class _AttentionGate(nn.Module):
    """DEAM gate inside the U-Net (official `Attention_unet`): blends the skip with the upsampled deeper features."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv_du = _squeeze_gate(ch)
        self.cat = _Conv(2 * ch, ch, 1)
        self.C = _Conv(ch, ch, 3)  # noqa: N815 - official key name
        self.ConvTranspose = _UpConvReLU(ch)  # noqa: N815 - official key name

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        """`(1 - w) * up(g) + w * x` with `w = gate(cat(C(x), up(g)))`."""
        up_g = self.ConvTranspose(g)
        w = self.conv_du(self.cat(torch.cat((self.C(x), up_g), dim=1)))
        return (1 - w) * up_g + w * x


class _NLO(nn.Module):
    """NLO sub-network (official `ziwangluo1`): 4-level U-Net with attention gates and a global residual."""

    def __init__(self, ch: int, n_in: int, n_out: int) -> None:
        super().__init__()
        # Registered but unused by the official forward; kept so that official checkpoints load strictly.
        self.conv_dila1 = _Conv(ch, ch, 3)
        self.conv_dila2 = _Conv(ch, ch, 5)
        self.conv_dila3 = _Conv(ch, ch, 7)
        self.cat1 = nn.Conv2d(3 * ch, ch, 1)
        nn.init.xavier_normal_(self.cat1.weight)
        self.e3 = _Encoder(ch, n_in)
        self.e2 = _Encoder(ch, n_in)
        self.e1 = _Encoder(ch, n_in)
        self.e0 = _Encoder(ch, n_in)
        self.attention3 = _AttentionGate(ch)
        self.attention2 = _AttentionGate(ch)
        self.attention1 = _AttentionGate(ch)
        self.attention0 = _AttentionGate(ch)
        self.mid = nn.Sequential(_ConvReLU(ch, ch, 3), _ConvReLU(ch, ch, 3))
        self.de3 = _Decoder(ch, n_out)
        self.de2 = _Decoder(ch, n_out)
        self.de1 = _Decoder(ch, n_out)
        self.de0 = _Decoder(ch, n_out)
        self.final = _Conv(ch, ch, 3)

    def forward(self, x: Tensor) -> Tensor:
        """`x + final(U-Net(x))`; H and W must be multiples of 16."""
        skip0, d = self.e0(x)
        skip1, d = self.e1(d)
        skip2, d = self.e2(d)
        skip3, d = self.e3(d)
        d = self.mid(d)
        for gate, dec, skip in ((self.attention3, self.de3, skip3), (self.attention2, self.de2, skip2),
                                (self.attention1, self.de1, skip1), (self.attention0, self.de0, skip0)):
            d = dec(gate(skip, d), d)
        return x + self.final(d)


class _Weight(nn.Module):
    """DEAM blending weight (official `Weight`): `gate(cat(C(y), x))`; note `C` acts on the second argument."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.cat = _Conv(2 * ch, ch, 1)
        self.C = _Conv(ch, ch, 3)  # noqa: N815 - official key name
        self.weight = _SCA(ch)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-pixel, per-channel weight in (0, 1)."""
        return self.weight(self.cat(torch.cat((self.C(y), x), dim=1)))


class _SCA(nn.Module):
    """Squeeze gate holder (official `SCA`; keys `conv_du.*`)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv_du = _squeeze_gate(ch)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gate."""
        return self.conv_du(x)


class _Transform(nn.Module):
    """Image -> features: `y = ext(x); y + pre(y)` (official `transform_function`)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.ext = _Conv(in_ch, out_ch, 3)
        self.pre = nn.Sequential(_Conv(out_ch, out_ch, 3), nn.ReLU(), _Conv(out_ch, out_ch, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Extract features with a residual refinement."""
        y = self.ext(x)
        return y + self.pre(y)


class _InverseTransform(nn.Module):
    """Features -> image: `ext(x + pre(x))` (official `Inverse_transform_function`)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.ext = _Conv(in_ch, out_ch, 3)
        self.pre = nn.Sequential(_Conv(in_ch, in_ch, 3), nn.ReLU(), _Conv(in_ch, in_ch, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Map features back to the image."""
        return self.ext(self.pre(x) + x)


@register_model("DeamNet", task="denoise",
                description="DeamNet (Ren et al. 2021): NLO attention U-Net unrolled 4x with DEAM consistency gates",
                call=CallConvention(pad_multiple=16, pad_mode="reflect"),
                test_spec={"type": "DeamNet", "Isreal": False, "channels": 16})
class DeamNet(nn.Module):
    """DeamNet (official `Deam`): output = inverse_transform(4 gated NLO passes over transform(x)); no clipping.

    Args:
        Isreal: True for the real-noise model (3 channels), False for the gray AWGN models (1 channel).
        channels: feature width, hard-coded to 64 in the official code (must be >= 16 for the attention gates).
    """

    # Parameters the official forward never uses (they get no gradient); generic gradient tests skip them.
    unused_parameter_prefixes = ("net2.conv_dila1.", "net2.conv_dila2.", "net2.conv_dila3.", "net2.cat1.")

    def __init__(self, *, Isreal: bool = False, channels: int = 64) -> None:  # noqa: N803 - official keyword
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < _REDUCTION:
            raise RobustirError(f"DeamNet: channels must be an integer >= {_REDUCTION} (the attention gates "
                                f"squeeze to channels // {_REDUCTION}), got {channels!r}")
        self.image_channels = 3 if Isreal else 1
        self.transform_function = _Transform(self.image_channels, channels)
        self.inverse_transform_function = _InverseTransform(channels, self.image_channels)
        self.line11 = _Weight(channels)
        self.line22 = _Weight(channels)
        self.line33 = _Weight(channels)
        self.line44 = _Weight(channels)
        self.net2 = _NLO(channels, 3, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise a `(N, 1 or 3, H, W)` batch, H and W multiples of 16."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise RobustirError(f"DeamNet: input must have shape (N, {self.image_channels}, H, W), "
                                f"got {tuple(x.shape)}")
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise RobustirError(f"DeamNet: H and W must be multiples of 16 (four stride-2 levels), got "
                                f"{tuple(x.shape[-2:])}; use robustir.models.restorer(...) to pad automatically")
        y = self.transform_function(x)
        h = y
        for gate in (self.line11, self.line22, self.line33, self.line44):
            h = self.net2(h)
            delta = gate(h, y)
            h = (1 - delta) * h + delta * y
        return self.inverse_transform_function(h)


register_preset("deamnet", {"type": "DeamNet", "Isreal": False},
                "DeamNet gray AWGN model (released noise15/25/50.pth; 2,225,825 parameters)")
register_preset("deamnet-real", {"type": "DeamNet", "Isreal": True},
                "DeamNet real-noise colour model (released Real.pth; 2,228,131 parameters)")
