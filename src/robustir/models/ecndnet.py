"""ECNDNet (Tian et al., "Enhanced CNN for image denoising", CAAI TIT 2019), equal to hellloxiaotian/ECNDNet `models.py`.

Sixteen 3x3 conv layers of width 64 (the 2nd, 5th, 9th and 12th dilated by 2), BatchNorm + ReLU in layers 1-15, a
1-channel conv + ReLU, then a 1-channel 3x3 conv with bias; the output is `x - noise` (residual learning). The width is
hard-coded in the official class, so there is no width option; `num_of_layers` is accepted and ignored, as there.
Released checkpoints (`sigma*/model_180.pth`) come from `nn.DataParallel` (`module.` prefix) and have no
`num_batches_tracked` entries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset

_FEATURES = 64
_DILATED = frozenset({2, 5, 9, 12})  # 1-based indices of the dilated layers among conv1_1..conv1_15
_N_BN_LAYERS = 15


def _bn_conv(in_ch: int, dilation: int) -> nn.Sequential:
    """Conv3x3 (no bias, 'same' padding) + BatchNorm (PyTorch defaults) + ReLU, keys `0.weight`, `1.*`."""
    return nn.Sequential(nn.Conv2d(in_ch, _FEATURES, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(_FEATURES), nn.ReLU())


@register_model("ECNDNet", task="denoise",
                description="ECNDNet (Tian et al. 2019): 17-layer DnCNN-like net with dilated convs, residual output",
                call=CallConvention(),
                test_spec={"type": "ECNDNet", "channels": 1})
class ECNDNet(nn.Module):
    """ECNDNet: `x - conv3(relu(conv1_16(conv1_15(...conv1_1(x)))))`.

    Args:
        channels: input image channels (1 for the released gray models). The predicted noise always has one
            channel (hard-coded in the official code) and is broadcast over the input channels.
        num_of_layers: accepted for compatibility with the official signature and ignored (the depth is fixed).
    """

    def __init__(self, *, channels: int = 1, num_of_layers: int = 15) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise RobustirError(f"ECNDNet: channels must be a positive integer, got {channels!r}")
        self.channels = channels
        self.num_of_layers = num_of_layers
        for i in range(1, _N_BN_LAYERS + 1):
            setattr(self, f"conv1_{i}", _bn_conv(channels if i == 1 else _FEATURES, 2 if i in _DILATED else 1))
        self.conv1_16 = nn.Sequential(nn.Conv2d(_FEATURES, 1, 3, padding=1, bias=False), nn.ReLU())
        self.conv3 = nn.Conv2d(1, 1, 3, padding=1, bias=True)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # The official init: N(0, 2/(9*64)) for every conv weight and BN gamma, gammas pushed away from 0 by at least
        # 0.025, running_var 0.01 (conv biases keep PyTorch's default).
        std = (2.0 / (9.0 * 64)) ** 0.5
        clip_b = 0.025
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, std)
            elif isinstance(m, nn.BatchNorm2d):
                w = m.weight.normal_(0.0, std)
                small_pos = (w >= 0) & (w < clip_b)
                small_neg = (w > -clip_b) & (w < 0)
                w[small_pos] = clip_b
                w[small_neg] = -clip_b
                m.running_var.fill_(0.01)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise a `(N, channels, H, W)` batch (any H, W); no clipping."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise RobustirError(f"ECNDNet: input must have shape (N, {self.channels}, H, W), got {tuple(x.shape)}")
        h = x
        for i in range(1, _N_BN_LAYERS + 1):
            h = getattr(self, f"conv1_{i}")(h)
        return x - self.conv3(self.conv1_16(h))


register_preset("ecndnet", {"type": "ECNDNet", "channels": 1, "num_of_layers": 17},
                "ECNDNet gray (released sigma15/25/50 checkpoints, 519,178 parameters)")
