"""FFDNet (Zhang, Zuo, Zhang, TIP 2018), equal to KAIR's `models/network_ffdnet.py` (cszn/KAIR @ fc1732f).

The noisy image is replicate-padded to even size, pixel-unshuffled by 2, concatenated with a constant noise-level map
and passed through a plain Conv+ReLU stack whose output is pixel-shuffled back and cropped. No residual, no BN in the
released models (`ffdnet_gray.pth`: nc 64, nb 15; `ffdnet_color.pth`: nc 96, nb 12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.dncnn import check_channels, plain_stack
from robustir.models.layers import pixel_unshuffle
from robustir.models.registry import CallConvention, register_model, register_preset

SCALE = 2  # KAIR's FFDNet works at half resolution (sf = 2 is a local constant there)


def _ffdnet_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    assert sigma is not None  # the restorer enforces needs_sigma
    return net(y, sigma.reshape(-1, 1, 1, 1))


@register_model("FFDNet", task="denoise", kair_names=("ffdnet",),
                description="FFDNet (Zhang et al. 2018): pixel-unshuffled CNN with a noise-level map input, non-blind",
                call=CallConvention(needs_sigma=True, adapter=_ffdnet_adapter),
                test_spec={"type": "FFDNet", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 4, "act_mode": "R"})
class FFDNet(nn.Module):
    """FFDNet: `forward(x, sigma)` with `sigma` of shape `(N, 1, 1, 1)` in [0,1] units (25/255 for sigma 25).

    Args:
        in_nc: image channels (1 gray, 3 colour).
        out_nc: output channels.
        nc: feature width (64 gray, 96 colour).
        nb: number of conv layers (15 gray, 12 colour).
        act_mode: 'R' (released) or 'BR'.
    """

    def __init__(self, *, in_nc: int = 1, out_nc: int = 1, nc: int = 64, nb: int = 15, act_mode: str = "R") -> None:
        super().__init__()
        self.in_nc = in_nc
        self.image_channels = in_nc
        self.model = plain_stack(in_nc * SCALE * SCALE + 1, out_nc * SCALE * SCALE, nc, nb, act_mode)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Denoise `(N, in_nc, H, W)` (any H, W) given per-image noise levels `(N, 1, 1, 1)`."""
        check_channels(x, self.in_nc, "FFDNet")
        if not isinstance(sigma, Tensor) or sigma.ndim != 4 or sigma.shape[1:] != (1, 1, 1) \
                or sigma.shape[0] != x.shape[0]:
            shape = tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__
            raise RobustirError(f"FFDNet: sigma must be a ({x.shape[0]}, 1, 1, 1) tensor in [0,1] units, got {shape}")
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        x = pixel_unshuffle(x, SCALE)
        noise_map = sigma.to(x.dtype).expand(-1, 1, x.shape[-2], x.shape[-1])
        x = self.model(torch.cat((x, noise_map), dim=1))
        return F.pixel_shuffle(x, SCALE)[..., :h, :w]


register_preset("ffdnet-gray", {"type": "FFDNet", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 15, "act_mode": "R"},
                "FFDNet gray (KAIR ffdnet_gray.pth)")
register_preset("ffdnet-color", {"type": "FFDNet", "in_nc": 3, "out_nc": 3, "nc": 96, "nb": 12, "act_mode": "R"},
                "FFDNet colour (KAIR ffdnet_color.pth)")
