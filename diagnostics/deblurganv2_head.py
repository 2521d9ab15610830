"""Is DeblurGANv2's output head what keeps the small generator below the Wiener filter? Two probes.

The generator has no full-resolution features: MobileNetV2's stem has stride 2, and the head nearest-upsamples its
last (half-resolution, ReLU'd) features into one 3x3 conv, a tanh, and the input added back.

`ceiling`: the head alone, fitted directly to held-out pairs. Free non-negative half-resolution features per image
(what smooth2 emits), nearest upsampling, one shared 3x3 conv, tanh, plus the input: the PSNR it reaches bounds what
any body could get out of this head; the oracle Wiener filter is scored on the same pairs beside it.

`fullres CONFIG`: trains (with `robustir.train`) the generator of CONFIG with a two-conv full-resolution branch on
the input concatenated before the final conv, model type `FPNMobileNetFullRes` (an ablation, not in the zoo).

    python diagnostics/deblurganv2_head.py ceiling [--channels 12] [--iters 3000]
    python diagnostics/deblurganv2_head.py fullres diagnostics/deblurganv2_fullres.yaml
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.metrics import psnr
from robustir.models.deblurganv2 import FPNMobileNet, _deblurgan_adapter
from robustir.models.registry import CallConvention, register_model
from robustir.train.deblur import evaluate_deblur, heldout_set, wiener_model


def head_ceiling(*, channels: int = 12, iters: int = 3000, pairs: int = 16, seed: int = 0,
                 root: str | None = None) -> dict[str, float]:
    """Fit the head alone (free features + shared conv) to `pairs` held-out pairs; PSNRs of the fit and of Wiener."""
    torch.manual_seed(seed)
    data = heldout_set(root=root)
    idx = torch.arange(0, len(data), max(1, len(data) // pairs))[:pairs]  # every kernel, several images
    sub = replace(data, clean=data.clean[idx], blurred=data.blurred[idx], kernel=data.kernel[idx],
                  sigma=data.sigma[idx], image_id=data.image_id[idx], kernel_id=data.kernel_id[idx])
    y, x = sub.blurred * 2 - 1, sub.clean * 2 - 1
    n, _, h, w = y.shape
    feats = nn.Parameter(0.1 * torch.randn(n, channels, h // 2, w // 2))
    final = nn.Conv2d(channels, 3, kernel_size=3, padding=1)
    opt = torch.optim.Adam([feats, *final.parameters()], lr=0.02)

    def head() -> Tensor:
        up = F.interpolate(F.relu(feats), scale_factor=2, mode="nearest")
        return torch.clamp(torch.tanh(final(up)) + y, -1, 1)

    for it in range(iters):
        loss = (head() - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 500 == 0:
            print(f"iter {it}: mse {loss.item():.3e}", flush=True)
    with torch.no_grad():
        fitted = (head() + 1) / 2
    # scored like evaluate_deblur: 8-bit quantised output, mean of per-image PSNRs
    return {"head_fit_psnr": float(psnr(fitted, sub.clean, quantize=True).mean()),
            "wiener_psnr": evaluate_deblur(wiener_model(0.01), sub, with_ssim=False)["psnr"],
            "blurred_psnr": evaluate_deblur(lambda y_, **_: y_, sub, with_ssim=False)["psnr"], "pairs": float(n)}


@register_model("FPNMobileNetFullRes", task="deblur", description="ablation: FPNMobileNet + full-resolution branch",
                call=CallConvention(adapter=_deblurgan_adapter))
class FPNMobileNetFullRes(FPNMobileNet):
    """FPNMobileNet whose final conv also sees two 3x3 conv layers computed on the full-resolution input."""

    def __init__(self, *, num_filters: int = 64, num_filters_fpn: int = 128, width_mult: float = 1.0,
                 last_channel: int | None = None, norm_stats: str = "running", pad: str = "predict",
                 full_res: int = 16) -> None:
        super().__init__(num_filters=num_filters, num_filters_fpn=num_filters_fpn, width_mult=width_mult,
                         last_channel=last_channel, norm_stats=norm_stats, pad=pad)
        self.full = nn.Sequential(nn.Conv2d(3, full_res, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(full_res, full_res, 3, padding=1), nn.ReLU())
        self.final = nn.Conv2d(self.final.in_channels + full_res, 3, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """The official forward with the full-resolution branch concatenated before the final conv."""
        map0, map1, map2, map3, map4 = self.fpn(x)
        map4 = F.interpolate(self.head4(map4), scale_factor=8, mode="nearest")
        map3 = F.interpolate(self.head3(map3), scale_factor=4, mode="nearest")
        map2 = F.interpolate(self.head2(map2), scale_factor=2, mode="nearest")
        smoothed = self.smooth(torch.cat([map4, map3, map2, self.head1(map1)], dim=1))
        smoothed = self.smooth2(F.interpolate(smoothed, scale_factor=2, mode="nearest") + map0)
        up = F.interpolate(smoothed, scale_factor=2, mode="nearest")
        return torch.clamp(torch.tanh(self.final(torch.cat([up, self.full(x)], dim=1))) + x, min=-1, max=1)


def main() -> None:
    """Command line: `ceiling` or `fullres CONFIG`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("--channels", type=int, default=12)
    c.add_argument("--iters", type=int, default=3000)
    f = sub.add_parser("fullres")
    f.add_argument("config")
    args = parser.parse_args()
    if args.probe == "ceiling":
        print({k: round(v, 2) for k, v in head_ceiling(channels=args.channels, iters=args.iters).items()})
    else:
        from robustir.train.config import load_config
        from robustir.train.loop import train

        train(load_config(args.config))


if __name__ == "__main__":
    main()
