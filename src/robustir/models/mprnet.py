"""MPRNet (Zamir et al., CVPR 2021): multi-stage progressive restoration, deblurring variant.

Equivalent to `swz30/MPRNet` `Deblurring/MPRNet.py` (class `MPRNet`): same constructor keywords, parameter names and
outputs. `forward(x)` returns the list `[stage3_img + x, stage2_img, stage1_img]`; the restored image is element 0.
H and W must be multiples of 8 (the official test script reflect-pads bottom/right to x8 and crops; the uniform
`restorer(...)` does the same).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset


def _conv(cin: int, cout: int, kernel_size: int, *, bias: bool = False, stride: int = 1) -> nn.Conv2d:
    """'Same' convolution as the official `conv` helper."""
    return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias, stride=stride)


class CALayer(nn.Module):
    """Squeeze-and-excitation channel attention: x * sigmoid(W2 relu(W1 avgpool(x)))."""

    def __init__(self, *, channel: int, reduction: int, bias: bool) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channel, channel // reduction, 1, bias=bias), nn.ReLU(inplace=True),
                                     nn.Conv2d(channel // reduction, channel, 1, bias=bias), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        """Reweight channels."""
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class CAB(nn.Module):
    """Channel attention block: x + CA(conv(act(conv(x))))."""

    def __init__(self, *, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module) -> None:
        super().__init__()
        self.CA = CALayer(channel=n_feat, reduction=reduction, bias=bias)
        # `act` is one PReLU shared by every CAB of the network (official); it is listed once per CAB in state_dict
        self.body = nn.Sequential(_conv(n_feat, n_feat, kernel_size, bias=bias), act,
                                  _conv(n_feat, n_feat, kernel_size, bias=bias))

    def forward(self, x: Tensor) -> Tensor:
        """Residual attention block."""
        return self.CA(self.body(x)) + x


def _cabs(n: int, count: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[CAB(n_feat=n, kernel_size=kernel_size, reduction=reduction, bias=bias, act=act)
                           for _ in range(count)])


class SAM(nn.Module):
    """Supervised attention module: predicts the stage image and gates the features with it."""

    def __init__(self, *, n_feat: int, img_c: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = _conv(n_feat, n_feat, kernel_size, bias=bias)
        self.conv2 = _conv(n_feat, img_c, kernel_size, bias=bias)
        self.conv3 = _conv(img_c, n_feat, kernel_size, bias=bias)

    def forward(self, x: Tensor, x_img: Tensor) -> tuple[Tensor, Tensor]:
        """Return (gated features, stage image)."""
        img = self.conv2(x) + x_img
        return self.conv1(x) * torch.sigmoid(self.conv3(img)) + x, img


class DownSample(nn.Module):
    """Bilinear x0.5 then a 1x1 conv widening by `s_factor` channels."""

    def __init__(self, *, in_channels: int, s_factor: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  nn.Conv2d(in_channels, in_channels + s_factor, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """Halve the resolution."""
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear x2 then a 1x1 conv narrowing by `s_factor` channels."""

    def __init__(self, *, in_channels: int, s_factor: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(in_channels + s_factor, in_channels, 1, bias=False))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Double the resolution (and add the skip, as the official `SkipUpSample`)."""
        x = self.up(x)
        return x if skip is None else x + skip


class Encoder(nn.Module):
    """Three-level CAB encoder; with `csff`, fuses the previous stage's encoder/decoder features."""

    def __init__(self, *, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool,
                 scale_unetfeats: int, csff: bool) -> None:
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        self.encoder_level1 = _cabs(widths[0], 2, kernel_size, reduction, bias, act)
        self.encoder_level2 = _cabs(widths[1], 2, kernel_size, reduction, bias, act)
        self.encoder_level3 = _cabs(widths[2], 2, kernel_size, reduction, bias, act)
        self.down12 = DownSample(in_channels=widths[0], s_factor=scale_unetfeats)
        self.down23 = DownSample(in_channels=widths[1], s_factor=scale_unetfeats)
        self.csff = csff
        if csff:
            for i, w in enumerate(widths, start=1):
                setattr(self, f"csff_enc{i}", nn.Conv2d(w, w, 1, bias=bias))
            for i, w in enumerate(widths, start=1):
                setattr(self, f"csff_dec{i}", nn.Conv2d(w, w, 1, bias=bias))

    def _fuse(self, i: int, x: Tensor, enc: list[Tensor] | None, dec: list[Tensor] | None) -> Tensor:
        if enc is None or dec is None:
            return x
        return x + getattr(self, f"csff_enc{i + 1}")(enc[i]) + getattr(self, f"csff_dec{i + 1}")(dec[i])

    def forward(self, x: Tensor, encoder_outs: list[Tensor] | None = None,
                decoder_outs: list[Tensor] | None = None) -> list[Tensor]:
        """Return the three encoder features (full, 1/2, 1/4 resolution)."""
        enc1 = self._fuse(0, self.encoder_level1(x), encoder_outs, decoder_outs)
        enc2 = self._fuse(1, self.encoder_level2(self.down12(enc1)), encoder_outs, decoder_outs)
        enc3 = self._fuse(2, self.encoder_level3(self.down23(enc2)), encoder_outs, decoder_outs)
        return [enc1, enc2, enc3]


class Decoder(nn.Module):
    """Three-level CAB decoder with attention-filtered skips."""

    def __init__(self, *, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool,
                 scale_unetfeats: int) -> None:
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        self.decoder_level1 = _cabs(widths[0], 2, kernel_size, reduction, bias, act)
        self.decoder_level2 = _cabs(widths[1], 2, kernel_size, reduction, bias, act)
        self.decoder_level3 = _cabs(widths[2], 2, kernel_size, reduction, bias, act)
        self.skip_attn1 = CAB(n_feat=widths[0], kernel_size=kernel_size, reduction=reduction, bias=bias, act=act)
        self.skip_attn2 = CAB(n_feat=widths[1], kernel_size=kernel_size, reduction=reduction, bias=bias, act=act)
        self.up21 = UpSample(in_channels=widths[0], s_factor=scale_unetfeats)
        self.up32 = UpSample(in_channels=widths[1], s_factor=scale_unetfeats)

    def forward(self, outs: list[Tensor]) -> list[Tensor]:
        """Return the three decoder features (full, 1/2, 1/4 resolution)."""
        enc1, enc2, enc3 = outs
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: CABs and a bias-free conv, with a residual."""

    def __init__(self, *, n_feat: int, kernel_size: int, reduction: int, act: nn.Module, bias: bool,
                 num_cab: int) -> None:
        super().__init__()
        cabs = [CAB(n_feat=n_feat, kernel_size=kernel_size, reduction=reduction, bias=bias, act=act)
                for _ in range(num_cab)]
        # the official ORB's last conv ignores `bias` (it uses the helper's default, bias=False)
        self.body = nn.Sequential(*cabs, _conv(n_feat, n_feat, kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        """Residual block at full resolution."""
        return self.body(x) + x


class ORSNet(nn.Module):
    """Stage-3 subnetwork: three ORBs fused with the (upsampled) stage-2 encoder/decoder features."""

    def __init__(self, *, n_feat: int, scale_orsnetfeats: int, kernel_size: int, reduction: int, act: nn.Module,
                 bias: bool, scale_unetfeats: int, num_cab: int) -> None:
        super().__init__()
        w = n_feat + scale_orsnetfeats
        for i in (1, 2, 3):
            setattr(self, f"orb{i}", ORB(n_feat=w, kernel_size=kernel_size, reduction=reduction, act=act,
                                          bias=bias, num_cab=num_cab))
        self.up_enc1 = UpSample(in_channels=n_feat, s_factor=scale_unetfeats)
        self.up_dec1 = UpSample(in_channels=n_feat, s_factor=scale_unetfeats)
        self.up_enc2 = nn.Sequential(UpSample(in_channels=n_feat + scale_unetfeats, s_factor=scale_unetfeats),
                                     UpSample(in_channels=n_feat, s_factor=scale_unetfeats))
        self.up_dec2 = nn.Sequential(UpSample(in_channels=n_feat + scale_unetfeats, s_factor=scale_unetfeats),
                                     UpSample(in_channels=n_feat, s_factor=scale_unetfeats))
        for i in (1, 2, 3):
            setattr(self, f"conv_enc{i}", nn.Conv2d(n_feat, w, 1, bias=bias))
        for i in (1, 2, 3):
            setattr(self, f"conv_dec{i}", nn.Conv2d(n_feat, w, 1, bias=bias))

    def forward(self, x: Tensor, encoder_outs: list[Tensor], decoder_outs: list[Tensor]) -> Tensor:
        """Refine the stage-3 features."""
        x = self.orb1(x) + self.conv_enc1(encoder_outs[0]) + self.conv_dec1(decoder_outs[0])
        x = self.orb2(x) + self.conv_enc2(self.up_enc1(encoder_outs[1])) + self.conv_dec2(self.up_dec1(decoder_outs[1]))
        x = self.orb3(x) + self.conv_enc3(self.up_enc2(encoder_outs[2])) + self.conv_dec3(self.up_dec2(decoder_outs[2]))
        return x


@register_model("MPRNet", task="deblur",
                description="MPRNet (CVPR 2021) multi-stage progressive deblurring; outputs [final, stage2, stage1]",
                call=CallConvention(pad_multiple=8, pad_mode="reflect", select=0),
                test_spec={"type": "MPRNet", "n_feat": 8, "scale_unetfeats": 4, "scale_orsnetfeats": 4, "num_cab": 1,
                           "reduction": 2})
class MPRNet(nn.Module):
    """MPRNet, deblurring variant (Zamir et al., CVPR 2021; official `swz30/MPRNet` `Deblurring/MPRNet.py`).

    Args:
        in_c, out_c: image channels (the official code hard-codes 3 for both; they must be equal here, because every
            stage adds its prediction to the input).
        n_feat, scale_unetfeats, scale_orsnetfeats, num_cab, kernel_size, reduction, bias: official widths/options.

    `forward(x)` with x `(N, in_c, H, W)`, H and W multiples of 8, returns `[final, stage2_img, stage1_img]`.
    """

    def __init__(self, *, in_c: int = 3, out_c: int = 3, n_feat: int = 96, scale_unetfeats: int = 48,
                 scale_orsnetfeats: int = 32, num_cab: int = 8, kernel_size: int = 3, reduction: int = 4,
                 bias: bool = False) -> None:
        super().__init__()
        if in_c != out_c:
            raise RobustirError(f"MPRNet: in_c ({in_c}) must equal out_c ({out_c}); each stage adds its output to "
                                f"the input image")
        if reduction < 1 or n_feat < reduction:
            raise RobustirError(f"MPRNet: reduction={reduction} must be >= 1 and at most n_feat={n_feat}")
        self.in_c = in_c
        act = nn.PReLU()
        opts = {"kernel_size": kernel_size, "reduction": reduction, "bias": bias, "act": act}
        for i in (1, 2, 3):
            setattr(self, f"shallow_feat{i}", nn.Sequential(
                _conv(in_c, n_feat, kernel_size, bias=bias),
                CAB(n_feat=n_feat, kernel_size=kernel_size, reduction=reduction, bias=bias, act=act)))
        self.stage1_encoder = Encoder(n_feat=n_feat, scale_unetfeats=scale_unetfeats, csff=False, **opts)
        self.stage1_decoder = Decoder(n_feat=n_feat, scale_unetfeats=scale_unetfeats, **opts)
        self.stage2_encoder = Encoder(n_feat=n_feat, scale_unetfeats=scale_unetfeats, csff=True, **opts)
        self.stage2_decoder = Decoder(n_feat=n_feat, scale_unetfeats=scale_unetfeats, **opts)
        self.stage3_orsnet = ORSNet(n_feat=n_feat, scale_orsnetfeats=scale_orsnetfeats,
                                    scale_unetfeats=scale_unetfeats, num_cab=num_cab, **opts)
        self.sam12 = SAM(n_feat=n_feat, img_c=in_c, kernel_size=1, bias=bias)
        self.sam23 = SAM(n_feat=n_feat, img_c=in_c, kernel_size=1, bias=bias)
        self.concat12 = _conv(n_feat * 2, n_feat, kernel_size, bias=bias)
        self.concat23 = _conv(n_feat * 2, n_feat + scale_orsnetfeats, kernel_size, bias=bias)
        self.tail = _conv(n_feat + scale_orsnetfeats, out_c, kernel_size, bias=bias)

    def forward(self, x3_img: Tensor) -> list[Tensor]:
        """Restore `(N, C, H, W)` (H, W multiples of 8); return `[final, stage2_img, stage1_img]`."""
        if x3_img.ndim != 4 or x3_img.shape[1] != self.in_c:
            raise RobustirError(f"MPRNet: input must be (N, {self.in_c}, H, W), got {tuple(x3_img.shape)}")
        n, _, h, w = x3_img.shape
        if h % 8 or w % 8:
            raise RobustirError(f"MPRNet: H and W must be multiples of 8, got {h}x{w} (pad first, or use "
                                f"robustir.models.restorer, which pads and crops)")
        h2, w2 = h // 2, w // 2
        x2top, x2bot = x3_img[:, :, :h2], x3_img[:, :, h2:]
        # stage 1: the four quarter patches go through shared weights as one batch (top-left, top-right, ...)
        quarters = torch.cat([x2top[..., :w2], x2top[..., w2:], x2bot[..., :w2], x2bot[..., w2:]], dim=0)
        feat1 = self.stage1_encoder(self.shallow_feat1(quarters))
        ltop, rtop, lbot, rbot = zip(*(f.split(n, dim=0) for f in feat1))
        feat1_top = [torch.cat(p, dim=3) for p in zip(ltop, rtop)]
        feat1_bot = [torch.cat(p, dim=3) for p in zip(lbot, rbot)]
        # top and bottom halves share weights too: batch them
        feat1_half = [torch.cat(p, dim=0) for p in zip(feat1_top, feat1_bot)]
        res1 = self.stage1_decoder(feat1_half)
        halves = torch.cat([x2top, x2bot], dim=0)
        samfeats2, stage1_img = self.sam12(res1[0], halves)
        stage1_img = torch.cat(stage1_img.split(n, dim=0), dim=2)
        # stage 2
        x2 = self.concat12(torch.cat([self.shallow_feat2(halves), samfeats2], dim=1))
        feat2_half = self.stage2_encoder(x2, feat1_half, res1)
        feat2 = [torch.cat(f.split(n, dim=0), dim=2) for f in feat2_half]
        res2 = self.stage2_decoder(feat2)
        samfeats3, stage2_img = self.sam23(res2[0], x3_img)
        # stage 3
        x3 = self.concat23(torch.cat([self.shallow_feat3(x3_img), samfeats3], dim=1))
        x3 = self.stage3_orsnet(x3, feat2, res2)
        return [self.tail(x3) + x3_img, stage2_img, stage1_img]


register_preset("mprnet", {"type": "MPRNet"},
                "MPRNet deblurring, official defaults (GoPro release, 20,127,073 parameters)")
register_preset("mprnet-small", {"type": "MPRNet", "n_feat": 16, "scale_unetfeats": 8, "scale_orsnetfeats": 8,
                                 "num_cab": 2, "reduction": 4},
                "MPRNet at width 16, 2 CABs per ORB: small enough to train on CPU")
