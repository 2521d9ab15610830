"""Inception-ResNet-v2 (Szegedy et al., AAAI 2017) as laid out by `pretrainedmodels` 0.7.4 (Cadene).

DeblurGANv2's `FPNInception` uses this network as its backbone; the released `fpn_inception.h5` stores it under
`fpn.inception.*` with the `pretrainedmodels` module names, which this file reproduces exactly (`conv2d_1a`, ...,
`mixed_5b.branch3.1.conv.weight`, ..., `last_linear`). Convolutions are unpadded ("valid") where the original is,
so a 299x299 image gives 8x8 final features. Nothing is downloaded: weights come from a checkpoint.

`width_mult` (not an original option) scales every hidden width for small test models; 1.0 is the original
network (55,843,464 parameters with 1000 classes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

NormFactory = Callable[..., nn.Module]


class BasicConv2d(nn.Module):
    """Bias-free conv -> BatchNorm (eps 1e-3, the TensorFlow value) -> ReLU."""

    def __init__(self, *, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0, norm: NormFactory) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding, bias=False)
        self.bn = norm(cout, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv, norm and ReLU."""
        return self.relu(self.bn(self.conv(x)))


class Branches(nn.Module):
    """Parallel branches `branch0..branchK` whose outputs are concatenated on channels (an Inception 'mixed' block)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)
        self.num_branches = len(branches)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate every branch's output."""
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], dim=1)


class ResidualBlock(Branches):
    """Inception-ResNet block: branches -> concat -> 1x1 conv (`conv2d`, with bias) -> `x + scale * out` -> ReLU."""

    def __init__(self, *branches: nn.Module, concat: int, channels: int, scale: float, relu: bool = True) -> None:
        super().__init__(*branches)
        self.scale = scale
        self.conv2d = nn.Conv2d(concat, channels, kernel_size=1)
        if relu:  # the last Block8 has none (and registers none)
            self.relu = nn.ReLU()
        self.use_relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """Apply the scaled residual branch."""
        out = self.conv2d(super().forward(x)) * self.scale + x
        return self.relu(out) if self.use_relu else out


class InceptionResNetV2(nn.Module):
    """Inception-ResNet-v2 with the module names of `pretrainedmodels.models.inceptionresnetv2.InceptionResNetV2`.

    Args:
        num_classes: classifier outputs (`inceptionresnetv2(num_classes=1000, pretrained='imagenet')`: 1000).
        width_mult: scale of every hidden width (1.0: the original network).
        norm: BatchNorm factory called as `norm(channels, eps=0.001)` (default `nn.BatchNorm2d`).

    `stage_channels` lists the widths after conv2d_1a, maxpool_3a, maxpool_5a, mixed_6a and mixed_7a
    (32, 64, 192, 1088, 2080 at width 1).
    """

    def __init__(self, *, num_classes: int = 1000, width_mult: float = 1.0, norm: NormFactory | None = None) -> None:
        super().__init__()
        norm = norm or nn.BatchNorm2d

        def c(n: int) -> int:
            return max(1, int(n * width_mult))

        def conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> BasicConv2d:
            return BasicConv2d(cin=cin, cout=cout, kernel=kernel, stride=stride, padding=padding, norm=norm)

        def seq(*layers: nn.Module) -> nn.Sequential:
            return nn.Sequential(*layers)

        self.conv2d_1a = conv(3, c(32), 3, stride=2)
        self.conv2d_2a = conv(c(32), c(32), 3)
        self.conv2d_2b = conv(c(32), c(64), 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = conv(c(64), c(80), 1)
        self.conv2d_4a = conv(c(80), c(192), 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Branches(
            conv(c(192), c(96), 1),
            seq(conv(c(192), c(48), 1), conv(c(48), c(64), 5, padding=2)),
            seq(conv(c(192), c(64), 1), conv(c(64), c(96), 3, padding=1), conv(c(96), c(96), 3, padding=1)),
            seq(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), conv(c(192), c(64), 1)))
        # block widths follow from the concatenations, so any width_mult stays consistent (320/1088/2080 at 1)
        c35 = 2 * c(96) + 2 * c(64)
        self.repeat = seq(*[ResidualBlock(
            conv(c35, c(32), 1),
            seq(conv(c35, c(32), 1), conv(c(32), c(32), 3, padding=1)),
            seq(conv(c35, c(32), 1), conv(c(32), c(48), 3, padding=1), conv(c(48), c(64), 3, padding=1)),
            concat=2 * c(32) + c(64), channels=c35, scale=0.17) for _ in range(10)])
        self.mixed_6a = Branches(
            conv(c35, c(384), 3, stride=2),
            seq(conv(c35, c(256), 1), conv(c(256), c(256), 3, padding=1), conv(c(256), c(384), 3, stride=2)),
            nn.MaxPool2d(3, stride=2))
        c17 = 2 * c(384) + c35
        self.repeat_1 = seq(*[ResidualBlock(
            conv(c17, c(192), 1),
            seq(conv(c17, c(128), 1), conv(c(128), c(160), (1, 7), padding=(0, 3)),
                conv(c(160), c(192), (7, 1), padding=(3, 0))),
            concat=2 * c(192), channels=c17, scale=0.10) for _ in range(20)])
        self.mixed_7a = Branches(
            seq(conv(c17, c(256), 1), conv(c(256), c(384), 3, stride=2)),
            seq(conv(c17, c(256), 1), conv(c(256), c(288), 3, stride=2)),
            seq(conv(c17, c(256), 1), conv(c(256), c(288), 3, padding=1), conv(c(288), c(320), 3, stride=2)),
            nn.MaxPool2d(3, stride=2))
        c8 = c(384) + c(288) + c(320) + c17

        def block8(scale: float, relu: bool) -> ResidualBlock:
            return ResidualBlock(
                conv(c8, c(192), 1),
                seq(conv(c8, c(192), 1), conv(c(192), c(224), (1, 3), padding=(0, 1)),
                    conv(c(224), c(256), (3, 1), padding=(1, 0))),
                concat=c(192) + c(256), channels=c8, scale=scale, relu=relu)

        self.repeat_2 = seq(*[block8(0.20, True) for _ in range(9)])
        self.block8 = block8(1.0, False)
        self.conv2d_7b = conv(c8, c(1536), 1)
        self.avgpool_1a = nn.AvgPool2d(8, count_include_pad=False)
        self.last_linear = nn.Linear(c(1536), num_classes)
        self.stage_channels = (c(32), c(64), c(192), c17, c8)

    def features(self, x: Tensor) -> Tensor:
        """The convolutional trunk up to conv2d_7b (8x8 for a 299x299 input)."""
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
                     "mixed_5b", "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits: features -> 8x8 average pool -> linear (needs 299x299-sized input)."""
        return self.last_linear(self.avgpool_1a(self.features(x)).flatten(1))
