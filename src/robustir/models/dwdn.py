"""DWDN (Dong, Roth, Schiele, NeurIPS 2020): deep Wiener deconvolution in feature space, then a two-scale refiner.

Equivalent to `dongjxjx/dwdn` `model/deblur.py` (class `DEBLUR`, registered as `DWDN`): same parameter names, the
`forward(x, kernel)` signature and the two-scale output list `[half, full]` (the restored image is the last).
Differences from the official code, none of which changes the output:
  * `torch.fft` instead of the removed `torch.rfft`/`torch.irfft`, and no `.cuda()`: it runs on any device;
  * the caller's kernel is NOT normalised in place (the official forward divides it by its sum in place);
  * all feature channels are deconvolved in one batched FFT instead of a Python loop;
  * tiny floors on the noise-to-signal ratio and the signal deviation, so that a constant feature channel gives a
    finite result instead of NaN (the official code divides 0 by 0 there).
The kernel is a true convolution kernel with its centre at `(kh//2, kw//2)` (psf2otf puts it at the origin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.deblur_kernels import batch_kernels
from robustir.models.registry import CallConvention, register_model, register_preset


class Conv(nn.Module):
    """Conv2d (+ ReLU), the official `Conv` wrapper (parameters under `body.0`)."""

    def __init__(self, *, cin: int, cout: int, kernel_size: int, stride: int = 1, act: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution."""
        return self.body(x)


class Deconv(nn.Module):
    """x2 transposed conv (k3, s2, p1, output_padding 1) + ReLU, the official `Deconv` wrapper."""

    def __init__(self, *, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                                  nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        """Double the resolution."""
        return self.body(x)


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))) with 5x5 convs, the official `ResBlock` (convs at `body.0.body.0`, `body.2.body.0`)."""

    def __init__(self, *, n_feat: int, kernel_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(Conv(cin=n_feat, cout=n_feat, kernel_size=kernel_size), nn.ReLU(inplace=True),
                                  Conv(cin=n_feat, cout=n_feat, kernel_size=kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        """Residual block."""
        return self.body(x) + x


def _stack(cin: int, cout: int, n_res: int, ks: int, stride: int = 1) -> nn.Sequential:
    """Conv+ReLU followed by `n_res` ResBlocks (the official InBlock / Encoder / FeatureBlock layout)."""
    return nn.Sequential(Conv(cin=cin, cout=cout, kernel_size=ks, stride=stride, act=True),
                         *[ResBlock(n_feat=cout, kernel_size=ks) for _ in range(n_res)])


def median3x3(x: Tensor) -> Tensor:
    """3x3 median filter, stride 1, reflect-padded (the `MedianPool2d(3, padding=1)` the official code uses)."""
    n, c, h, w = x.shape
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    patches = p.unfold(2, 3, 1).unfold(3, 3, 1).reshape(n, c, h, w, 9)
    return patches.median(dim=-1).values


def wiener_nsr(f: Tensor) -> Tensor:
    """Per-channel noise-to-signal ratio `(N, C, 1, 1)` of DWDN, estimated from the median-filter residual.

    Follows the official `wiener_filter_para`, including `num = Hp * Hp` (the padded height squared, not Hp * Wp).
    """
    num = f.shape[-2] * f.shape[-2]
    d = median3x3(f) - f
    mean_n = d.sum((2, 3), keepdim=True) / num
    var_n = ((d - mean_n) ** 2).sum((2, 3), keepdim=True) / (num - 1)
    mean_s = f.sum((2, 3), keepdim=True) / num
    var_s = ((f - mean_s) ** 2).sum((2, 3), keepdim=True) / (num - 1)
    # floors only matter for constant channels, where the official code yields 0/0
    std_s = var_s.clamp_min(1e-24).sqrt()
    return (var_n / std_s * (8.0 / 3.0 / 10.0)).clamp_min(1e-12)


def psf2otf(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """One-sided 2-D DFT of `(N, 1, kh, kw)` kernels zero-padded to `size`, centre `(kh//2, kw//2)` moved to (0, 0)."""
    kh, kw = kernel.shape[-2:]
    psf = F.pad(kernel, (0, size[1] - kw, 0, size[0] - kh))
    psf = torch.roll(psf, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(psf)


def wiener_deconv_features(features: Tensor, kernel: Tensor) -> Tensor:
    """Wiener-deconvolve every channel of `(N, C, H, W)` features with per-image kernels `(N, 1, kh, kw)`.

    The features are replicate-padded by the kernel size on every side, deconvolved with
    `conj(K) / (|K|^2 + NSR)` (NSR estimated per channel) and cropped back.
    """
    kh, kw = kernel.shape[-2:]
    fp = F.pad(features, (kw, kw, kh, kh), mode="replicate")
    size = (fp.shape[-2], fp.shape[-1])
    otf = psf2otf(kernel, size)
    nsr = wiener_nsr(fp)
    g = otf.conj() / (otf.real ** 2 + otf.imag ** 2 + nsr)
    out = torch.fft.irfft2(g * torch.fft.rfft2(fp), s=size)
    return out[..., kh:-kh, kw:-kw]


def _dwdn_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> list[Tensor]:
    """Uniform call -> official `(x, kernel)`: reflect-pad to a multiple of 8 (the network cannot pad itself)."""
    k = batch_kernels(kernel, y, "DWDN")
    sums = k.sum((2, 3))
    if bool((sums <= 0).any()):
        raise RobustirError("DWDN: every kernel must have a positive sum (DWDN normalises each kernel by its sum)")
    h, w = y.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    mode = "reflect" if ph < h and pw < w else "replicate"
    x = F.pad(y, (0, pw, 0, ph), mode=mode) if ph or pw else y
    out = net(x, k)
    # both scales go back (the restorer selects the full one; training may supervise both), each without our padding
    return [o[..., : -(-h // (x.shape[-2] // o.shape[-2])), : -(-w // (x.shape[-1] // o.shape[-1]))] for o in out]


@register_model("DWDN", task="deblur",
                description="DWDN (NeurIPS 2020) deep Wiener deconvolution, non-blind; (x, kernel) -> [half, full]",
                call=CallConvention(needs_kernel=True, adapter=_dwdn_adapter, select=-1),
                test_spec={"type": "DWDN", "n_feats1": 4, "n_feats": 4})
class DWDN(nn.Module):
    """Deep Wiener Deconvolution Network (Dong, Roth, Schiele, NeurIPS 2020; official `dongjxjx/dwdn`, `DEBLUR`).

    Args:
        n_colors: image channels (official `args.n_colors`, 3 for the release).
        n_feats1: width of the Wiener-deconvolved feature space (hard-coded 16 in the official code).
        n_feats: base width of the refinement U-Net (hard-coded 32).
        n_resblock: ResBlocks per stage (hard-coded 3).

    `forward(x, kernel)`: x `(N, n_colors, H, W)`, H and W multiples of 8; kernel `(N, 1, kh, kw)` (normalised to sum
    1 internally, without modifying the caller's tensor). Returns `[out_half, out_full]`.
    """

    def __init__(self, *, n_colors: int = 3, n_feats1: int = 16, n_feats: int = 32, n_resblock: int = 3) -> None:
        super().__init__()
        ks = 5
        self.n_colors = n_colors
        self.n_levels, self.scale = 2, 0.5
        self.FeatureBlock = _stack(n_colors, n_feats1, 3, ks)
        self.inBlock1 = _stack(n_feats1, n_feats, 3, ks)
        self.inBlock2 = _stack(n_feats1 + n_feats, n_feats, 3, ks)
        self.encoder_first = _stack(n_feats, n_feats * 2, 3, ks, stride=2)
        self.encoder_second = _stack(n_feats * 2, n_feats * 4, 3, ks, stride=2)
        self.decoder_second = nn.Sequential(*[ResBlock(n_feat=n_feats * 4, kernel_size=ks) for _ in range(n_resblock)],
                                            Deconv(cin=n_feats * 4, cout=n_feats * 2))
        self.decoder_first = nn.Sequential(*[ResBlock(n_feat=n_feats * 2, kernel_size=ks) for _ in range(n_resblock)],
                                           Deconv(cin=n_feats * 2, cout=n_feats))
        self.outBlock = nn.Sequential(*[ResBlock(n_feat=n_feats, kernel_size=ks) for _ in range(n_resblock)])
        self.outBlock2 = nn.Sequential(Conv(cin=n_feats, cout=n_colors, kernel_size=ks))

    def forward(self, input: Tensor, kernel: Tensor) -> list[Tensor]:  # noqa: A002 (official argument name)
        """Deblur `(N, C, H, W)` with per-image kernels `(N, 1, kh, kw)`; return `[out_half, out_full]`."""
        n, c, h, w = input.shape
        if c != self.n_colors:
            raise RobustirError(f"DWDN: input must have {self.n_colors} channels, got shape {tuple(input.shape)}")
        if h % 8 or w % 8:
            raise RobustirError(f"DWDN: H and W must be multiples of 8, got {h}x{w} (use robustir.models.restorer, "
                                f"which pads and crops)")
        if kernel.ndim != 4 or kernel.shape[0] != n or kernel.shape[1] != 1:
            raise RobustirError(f"DWDN: kernel must be (N, 1, kh, kw) with N={n}, got {tuple(kernel.shape)}")
        kernel = kernel / kernel.sum(dim=(2, 3), keepdim=True)  # out of place: the caller's tensor is untouched
        clear = wiener_deconv_features(self.FeatureBlock(input), kernel)
        outputs: list[Tensor] = []
        input_pre = clear  # replaced at level 0
        for level in range(self.n_levels):
            scale = self.scale ** (self.n_levels - level - 1)
            size = (int(round(h * scale)), int(round(w * scale)))
            inp = F.interpolate(clear, size, mode="bilinear", align_corners=False)
            if level == 0:
                inblock = self.inBlock1(inp)
            else:
                pred = F.interpolate(input_pre, size, mode="bilinear", align_corners=False)
                inblock = self.inBlock2(torch.cat([inp, pred], dim=1))
            e1 = self.encoder_first(inblock)
            d1 = self.decoder_first(self.decoder_second(self.encoder_second(e1)) + e1)
            input_pre = self.outBlock(d1 + inblock)
            outputs.append(self.outBlock2(input_pre))
        return outputs


register_preset("dwdn", {"type": "DWDN"},
                "DWDN as released (model_DWDN.pt; n_feats1 16, n_feats 32; 7,049,507 parameters), non-blind")
register_preset("dwdn-small", {"type": "DWDN", "n_feats1": 8, "n_feats": 16},
                "DWDN at half width (n_feats1 8, n_feats 16): trainable on CPU, non-blind")
