"""DeblurGANv2 generators (Kupyn et al., ICCV 2019): FPN over MobileNetV2 (`fpn_mobilenet`) or Inception-ResNet-v2.

Equivalent to `VITA-Group/DeblurGANv2` `models/fpn_mobilenet.py` (class `FPNMobileNet`) with its own
`models/mobilenet_v2.py` backbone, and `models/fpn_inception.py` (class `FPNInception`) with the
`pretrainedmodels` 0.7.4 Inception-ResNet-v2 backbone (rebuilt in `robustir.models.inception_resnet_v2`, nothing
downloaded): same parameter names (including the `fpn.enc0..enc4` aliases of backbone layers that the released
checkpoints list), same [-1,1] input range, output `clamp(tanh(final) + x, -1, 1)`.

Norm statistics: the official `predict.py` runs the generator in TRAIN mode, one image per batch ("to use actual
stats in norm layers"); `norm_stats="per_image"` reproduces that for any batch size without touching the running
buffers, while `"running"` (default) is ordinary PyTorch behaviour (running statistics in eval mode).
`"instance"` gives inference the normalisation that training with batches used: each image's own statistics in the
instance norms (which `track_running_stats=True` otherwise swaps for a dataset average in eval mode), running
statistics in the batch norms. A generator trained here scored up to 1.8 dB lower when evaluated with `"running"`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.inception_resnet_v2 import InceptionResNetV2
from robustir.models.registry import CallConvention, register_model, register_preset

_NORM_STATS = ("running", "per_image", "instance")
_PADS = ("predict", "multiple")


class _PerImageMixin:
    """Norm layers that can normalise each image with its own spatial statistics (as batch-of-one train mode)."""

    per_image: bool = False

    def _per_image(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, weight=getattr(self, "weight", None), bias=getattr(self, "bias", None),
                               use_input_stats=True, eps=self.eps)  # type: ignore[attr-defined]


class BatchNorm2d(_PerImageMixin, nn.BatchNorm2d):
    """`nn.BatchNorm2d` with the optional per-image statistics switch."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (running/batch statistics, or per-image ones when `per_image`)."""
        return self._per_image(x) if self.per_image else super().forward(x)


class InstanceNorm2d(_PerImageMixin, nn.InstanceNorm2d):
    """`nn.InstanceNorm2d(affine=False, track_running_stats=True)` (the official 'instance' norm) with the switch."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (running statistics in eval mode, per-image ones when training or `per_image`)."""
        return self._per_image(x) if self.per_image else super().forward(x)


def _norm(kind: str, channels: int) -> nn.Module:
    """The official `get_norm_layer(kind)(channels)`."""
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False, track_running_stats=True)
    if kind == "batch":
        return BatchNorm2d(channels, affine=True)
    raise RobustirError(f"DeblurGANv2: norm_layer must be 'instance' or 'batch', got {kind!r}")


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), BatchNorm2d(oup), nn.ReLU6(inplace=True))


def _conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: (1x1 expand) -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, *, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s) of MobileNetV2
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


def mobilenet_v2_features(width_mult: float = 1.0, last_channel: int | None = None) -> nn.Sequential:
    """The 19 `features` of DeblurGANv2's MobileNetV2 (stem, 17 inverted residuals, final 1x1 conv)."""
    cin = int(32 * width_mult)
    if last_channel is None:
        # official: 1280, scaled only above width 1; below 1 we halve-scale it as the parity fixture did (80 at
        # 0.125). The layer is registered but never used by the FPN, so this only fixes state-dict shapes.
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280 if width_mult == 1.0 \
            else int(640 * width_mult)
    layers: list[nn.Module] = [_conv_bn(3, cin, 2)]
    for t, c, n, s in _MOBILENET_V2:
        cout = int(c * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(inp=cin, oup=cout, stride=s if i == 0 else 1, expand_ratio=t))
            cin = cout
    layers.append(_conv_1x1_bn(cin, last_channel))
    return nn.Sequential(*layers)


class FPNHead(nn.Module):
    """Two bias-free 3x3 conv + ReLU layers."""

    def __init__(self, *, num_in: int, num_mid: int, num_out: int) -> None:
        super().__init__()
        self.block0 = nn.Conv2d(num_in, num_mid, kernel_size=3, padding=1, bias=False)
        self.block1 = nn.Conv2d(num_mid, num_out, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the head."""
        return F.relu(self.block1(F.relu(self.block0(x))))


def _td(num_filters: int, norm_layer: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(num_filters, num_filters, kernel_size=3, padding=1), _norm(norm_layer, num_filters),
                         nn.ReLU(inplace=True))


class FPN(nn.Module):
    """MobileNetV2 feature pyramid: five encoder stages, lateral 1x1 convs and a top-down pathway."""

    def __init__(self, *, num_filters: int, norm_layer: str, width_mult: float, last_channel: int | None) -> None:
        super().__init__()
        self.features = mobilenet_v2_features(width_mult, last_channel)
        # aliases of slices of `features` (the official code registers them, so checkpoints list both names)
        self.enc0 = nn.Sequential(*self.features[0:2])
        self.enc1 = nn.Sequential(*self.features[2:4])
        self.enc2 = nn.Sequential(*self.features[4:7])
        self.enc3 = nn.Sequential(*self.features[7:11])
        self.enc4 = nn.Sequential(*self.features[11:16])
        _add_pyramid_layers(self, num_filters, norm_layer, [int(c * width_mult) for c in (16, 24, 32, 64, 160)])

    def unfreeze(self) -> None:
        """Make the backbone trainable (the official trainer freezes it for the first epochs)."""
        self.features.requires_grad_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return (lateral0 at 1/2, map1 at 1/4, map2 at 1/8, map3 at 1/16, map4 at 1/32)."""
        enc0, enc1, enc2, enc3, enc4 = _encode(self, x)
        map1, map2, map3, map4 = _top_down(self, self.lateral1(enc1), self.lateral2(enc2), self.lateral3(enc3),
                                           self.lateral4(enc4))
        return self.lateral0(enc0), map1, map2, map3, map4


def _add_pyramid_layers(fpn: nn.Module, num_filters: int, norm_layer: str, channels: Sequence[int]) -> None:
    """Register the official `td1..td3` blocks and 1x1 `lateral4..lateral0` convs (encoder widths enc0..enc4)."""
    for i in (1, 2, 3):
        setattr(fpn, f"td{i}", _td(num_filters, norm_layer))
    for i in (4, 3, 2, 1):
        setattr(fpn, f"lateral{i}", nn.Conv2d(channels[i], num_filters, kernel_size=1, bias=False))
    fpn.lateral0 = nn.Conv2d(channels[0], num_filters // 2, kernel_size=1, bias=False)


def _encode(fpn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backbone's five stages `enc0..enc4`, each fed the previous one's output."""
    feats = [fpn.enc0(x)]
    for i in (1, 2, 3, 4):
        feats.append(getattr(fpn, f"enc{i}")(feats[-1]))
    return tuple(feats)  # type: ignore[return-value]


def _top_down(fpn: nn.Module, lat1: Tensor, lat2: Tensor, lat3: Tensor, lat4: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The FPN top-down pathway: each level adds the 2x-upsampled coarser map, then its `td*` conv block."""
    map3 = fpn.td1(lat3 + F.interpolate(lat4, scale_factor=2, mode="nearest"))
    map2 = fpn.td2(lat2 + F.interpolate(map3, scale_factor=2, mode="nearest"))
    map1 = fpn.td3(lat1 + F.interpolate(map2, scale_factor=2, mode="nearest"))
    return map1, map2, map3, lat4


class InceptionFPN(nn.Module):
    """Inception-ResNet-v2 feature pyramid of the official `fpn_inception.py` (`FPN` there).

    The backbone's unpadded convolutions leave maps one to three pixels short of H/2^k, so the laterals are
    reflect-padded back: lateral4/3/1 by 1 on every side, lateral2 by (1, 2, 1, 2) and lateral0 by (0, 1, 0, 1).
    Backbone layers after mixed_7a (repeat_2, block8, conv2d_7b, last_linear) are registered but unused.
    """

    def __init__(self, *, num_filters: int, norm_layer: str, width_mult: float) -> None:
        super().__init__()
        self.inception = InceptionResNetV2(num_classes=1000, width_mult=width_mult, norm=BatchNorm2d)
        inc = self.inception
        # aliases of backbone modules (the official code registers them, so checkpoints list both names)
        self.enc0 = inc.conv2d_1a
        self.enc1 = nn.Sequential(inc.conv2d_2a, inc.conv2d_2b, inc.maxpool_3a)
        self.enc2 = nn.Sequential(inc.conv2d_3b, inc.conv2d_4a, inc.maxpool_5a)
        self.enc3 = nn.Sequential(inc.mixed_5b, inc.repeat, inc.mixed_6a)
        self.enc4 = nn.Sequential(inc.repeat_1, inc.mixed_7a)
        self.pad = nn.ReflectionPad2d(1)
        _add_pyramid_layers(self, num_filters, norm_layer, inc.stage_channels)

    def unfreeze(self) -> None:
        """Make the backbone trainable (the official FPN freezes it at construction)."""
        self.inception.requires_grad_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return (lateral0 at 1/2, map1 at 1/4, map2 at 1/8, map3 at 1/16, map4 at 1/32)."""
        enc0, enc1, enc2, enc3, enc4 = _encode(self, x)
        map1, map2, map3, map4 = _top_down(
            self, self.pad(self.lateral1(enc1)), F.pad(self.lateral2(enc2), (1, 2, 1, 2), mode="reflect"),
            self.pad(self.lateral3(enc3)), self.pad(self.lateral4(enc4)))
        return F.pad(self.lateral0(enc0), (0, 1, 0, 1), mode="reflect"), map1, map2, map3, map4


def _padded_size(n: int, pad: str, low: int) -> int:
    """predict.py's ((n // 32) + 1) * 32 (a whole extra block even when n is a multiple), or the next multiple."""
    return max((n // 32 + 1) * 32 if pad == "predict" else -(-n // 32) * 32, low)


def _deblurgan_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    """predict.py's pipeline on [0,1] input: map to [-1,1], zero-pad bottom/right to ((h//32)+1)*32, run, map back.

    With the generator's `pad="multiple"`, sizes are padded only up to the next multiple of 32 (none for the square
    crops the official trainer feeds). Sizes are raised to the generator's `min_size` (128 for FPNInception, on which
    the official code fails below it).
    """
    h, w = y.shape[-2:]
    low, pad = getattr(net, "min_size", 32), getattr(net, "pad", "predict")
    x = y * 2 - 1
    x = F.pad(x, (0, _padded_size(w, pad, low) - w, 0, _padded_size(h, pad, low) - h))
    return (net(x) + 1) / 2  # the restorer crops to (h, w)


class _FPNGenerator(nn.Module):
    """The DeblurGANv2 generator body shared by both backbones: four FPN heads, two smoothing stages, tanh residual."""

    min_size = 32

    def __init__(self, *, fpn: Callable[[], nn.Module], norm_layer: str, output_ch: int, num_filters: int,
                 num_filters_fpn: int, pretrained: bool, norm_stats: str, pad: str) -> None:
        super().__init__()
        name = type(self).__name__
        if pad not in _PADS:
            raise RobustirError(f"{name}: pad must be one of {_PADS}, got {pad!r}")
        self.pad = pad
        if pretrained:
            raise RobustirError(f"{name}: pretrained=True would load ImageNet backbone weights; robustir never "
                                f"downloads. Build with pretrained=False and load a checkpoint with load_weights()")
        if output_ch != 3:
            raise RobustirError(f"{name}: output_ch must be 3 (the output is added to the RGB input), got {output_ch}")
        _norm(norm_layer, 1)  # fail on a bad norm name before building a large backbone
        if num_filters_fpn != 2 * num_filters or num_filters % 2:
            # the official forward adds the fpn's lateral0 map (num_filters_fpn // 2 channels) to the smoothed heads
            # (num_filters channels), then halves them in smooth2
            raise RobustirError(f"{name}: num_filters_fpn must be twice num_filters, and num_filters even (the "
                                f"official defaults are 128 and 64), got {num_filters_fpn} and {num_filters}")
        self.fpn = fpn()
        for i in (1, 2, 3, 4):
            setattr(self, f"head{i}", FPNHead(num_in=num_filters_fpn, num_mid=num_filters, num_out=num_filters))
        self.smooth = nn.Sequential(nn.Conv2d(4 * num_filters, num_filters, kernel_size=3, padding=1),
                                    _norm(norm_layer, num_filters), nn.ReLU())
        self.smooth2 = nn.Sequential(nn.Conv2d(num_filters, num_filters // 2, kernel_size=3, padding=1),
                                     _norm(norm_layer, num_filters // 2), nn.ReLU())
        self.final = nn.Conv2d(num_filters // 2, output_ch, kernel_size=3, padding=1)
        self.set_norm_stats(norm_stats)

    def set_norm_stats(self, mode: str) -> None:
        """Choose 'running' (PyTorch train/eval), 'per_image' (predict.py) or 'instance' (training's statistics)."""
        if mode not in _NORM_STATS:
            raise RobustirError(f"{type(self).__name__}: norm_stats must be one of {_NORM_STATS}, got {mode!r}")
        self.norm_stats = mode
        for m in self.modules():
            if isinstance(m, _PerImageMixin):
                m.per_image = mode == "per_image" or (mode == "instance" and isinstance(m, InstanceNorm2d))

    def unfreeze(self) -> None:
        """Make the backbone trainable (official method name)."""
        self.fpn.unfreeze()

    def forward(self, x: Tensor) -> Tensor:
        """Deblur `(N, 3, H, W)` in [-1,1] with H, W multiples of 32 (and at least `min_size`)."""
        name = type(self).__name__
        if x.ndim != 4 or x.shape[1] != 3:
            raise RobustirError(f"{name}: input must be (N, 3, H, W) in [-1,1], got {tuple(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32 or min(x.shape[2:]) < self.min_size:
            raise RobustirError(f"{name}: H and W must be multiples of 32 and at least {self.min_size}, got "
                                f"{x.shape[2]}x{x.shape[3]} (use robustir.models.restorer, which pads like predict.py)")
        map0, map1, map2, map3, map4 = self.fpn(x)
        map4 = F.interpolate(self.head4(map4), scale_factor=8, mode="nearest")
        map3 = F.interpolate(self.head3(map3), scale_factor=4, mode="nearest")
        map2 = F.interpolate(self.head2(map2), scale_factor=2, mode="nearest")
        map1 = self.head1(map1)
        smoothed = self.smooth(torch.cat([map4, map3, map2, map1], dim=1))
        smoothed = self.smooth2(F.interpolate(smoothed, scale_factor=2, mode="nearest") + map0)
        final = self.final(F.interpolate(smoothed, scale_factor=2, mode="nearest"))
        return torch.clamp(torch.tanh(final) + x, min=-1, max=1)


@register_model("FPNMobileNet", task="deblur",
                description="DeblurGANv2 generator, FPN + MobileNetV2 (ICCV 2019); [-1,1] images, blind",
                call=CallConvention(adapter=_deblurgan_adapter),
                test_spec={"type": "FPNMobileNet", "num_filters": 8, "num_filters_fpn": 16, "width_mult": 0.25})
class FPNMobileNet(_FPNGenerator):
    """DeblurGANv2 FPN-MobileNetV2 generator (Kupyn et al., ICCV 2019; official `VITA-Group/DeblurGANv2`).

    Args:
        norm_layer: 'instance' (InstanceNorm2d, affine False, running stats tracked: the released model) or 'batch'.
        output_ch, num_filters, num_filters_fpn: official options (released: 3, 64, 128).
        width_mult: MobileNetV2 width (official 1.0, hard-coded); also scales the lateral convs' input widths.
        last_channel: width of the unused final backbone conv (default: official rule, see `mobilenet_v2_features`).
        pretrained: must be False: nothing is downloaded; load released weights with `load_weights`.
        norm_stats: 'running' (PyTorch default behaviour), 'per_image' (the official predict.py train-mode
            inference, per image, without updating running buffers) or 'instance' (instance norms always use each
            image's statistics, as in training; batch norms their running ones: the consistent mode for networks
            trained with batches).
        pad: what the uniform restorer pads [0,1] images to: 'predict' (predict.py's ((h // 32) + 1) * 32, a whole
            extra 32-pixel band even on a multiple of 32) or 'multiple' (the next multiple of 32: none on the
            official trainer's 256x256 crops, so training on crops sees no padding band). Not a weight: a checkpoint
            loads under either.

    `forward(x)`: x `(N, 3, H, W)` in [-1,1], H and W multiples of 32; returns `clamp(tanh(final) + x, -1, 1)`.
    """

    def __init__(self, *, norm_layer: str = "instance", output_ch: int = 3, num_filters: int = 64,
                 num_filters_fpn: int = 128, width_mult: float = 1.0, last_channel: int | None = None,
                 pretrained: bool = False, norm_stats: str = "running", pad: str = "predict") -> None:
        if int(16 * width_mult) < 1:
            raise RobustirError(f"FPNMobileNet: width_mult={width_mult} leaves a backbone stage with no channels")
        super().__init__(fpn=lambda: FPN(num_filters=num_filters_fpn, norm_layer=norm_layer, width_mult=width_mult,
                                         last_channel=last_channel),
                         norm_layer=norm_layer, output_ch=output_ch, num_filters=num_filters,
                         num_filters_fpn=num_filters_fpn, pretrained=pretrained, norm_stats=norm_stats, pad=pad)


@register_model("FPNInception", task="deblur",
                description="DeblurGANv2 generator, FPN + Inception-ResNet-v2 (ICCV 2019); [-1,1] images, blind",
                call=CallConvention(adapter=_deblurgan_adapter),
                test_spec={"type": "FPNInception", "num_filters": 8, "num_filters_fpn": 16, "width_mult": 0.0625})
class FPNInception(_FPNGenerator):
    """DeblurGANv2 FPN-Inception-ResNet-v2 generator (Kupyn et al., ICCV 2019; official `VITA-Group/DeblurGANv2`).

    Args:
        norm_layer: 'instance' (InstanceNorm2d, affine False, running stats tracked: the released model) or 'batch'.
        output_ch, num_filters, num_filters_fpn: official options (released: 3, 128, 256).
        width_mult: backbone width scale for small test models (not an official option; 1.0 is the
            `pretrainedmodels` network, 55,843,464 parameters); also scales the lateral convs' input widths.
        pretrained: must be False: nothing is downloaded; load released weights (`fpn_inception.h5`) with
            `load_weights`.
        norm_stats: 'running', 'per_image' (predict.py's train-mode inference; applies to the backbone
            BatchNorms too) or 'instance' (per-image statistics in the instance norms only), as for `FPNMobileNet`.
        pad: 'predict' or 'multiple', as for `FPNMobileNet`.

    The official FPN freezes the backbone's parameters at construction (training unfreezes it later); robustir
    leaves them trainable. `forward(x)`: x `(N, 3, H, W)` in [-1,1], H and W multiples of 32 and at least 128 (the
    unpadded backbone leaves 1/32 maps too small to reflect-pad below that); returns `clamp(tanh(final) + x, -1, 1)`.
    """

    min_size = 128

    def __init__(self, *, norm_layer: str = "instance", output_ch: int = 3, num_filters: int = 128,
                 num_filters_fpn: int = 256, width_mult: float = 1.0, pretrained: bool = False,
                 norm_stats: str = "running", pad: str = "predict") -> None:
        if not 0 < width_mult <= 1:
            raise RobustirError(f"FPNInception: width_mult must be in (0, 1] (1 = the released backbone), "
                                f"got {width_mult}")
        super().__init__(fpn=lambda: InceptionFPN(num_filters=num_filters_fpn, norm_layer=norm_layer,
                                                  width_mult=width_mult),
                         norm_layer=norm_layer, output_ch=output_ch, num_filters=num_filters,
                         num_filters_fpn=num_filters_fpn, pretrained=pretrained, norm_stats=norm_stats, pad=pad)


register_preset("deblurganv2-fpn-mobilenet", {"type": "FPNMobileNet"},
                "DeblurGANv2 FPN-MobileNetV2 generator as released (fpn_mobilenet.h5; 3,312,707 parameters)")
register_preset("deblurganv2-fpn-mobilenet-predict", {"type": "FPNMobileNet", "norm_stats": "per_image"},
                "DeblurGANv2 FPN-MobileNetV2 with predict.py's train-mode (per-image) norm statistics")
register_preset("deblurganv2-fpn-mobilenet-small", {"type": "FPNMobileNet", "num_filters": 16,
                                                    "num_filters_fpn": 32, "width_mult": 0.5},
                "DeblurGANv2 FPN-MobileNetV2 at half backbone width and 1/4 head width: trainable on CPU")
register_preset("deblurganv2-fpn-inception", {"type": "FPNInception"},
                "DeblurGANv2 FPN-Inception-ResNet-v2 generator as released (fpn_inception.h5; 60,929,291 parameters)")
