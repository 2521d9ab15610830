"""The NAFNet family as one U-shaped encoder-decoder: Baseline, Intermediate, Intermediate+ReLU and NAFNet.

Chen, Chu, Zhang, Sun, "Simple Baselines for Image Restoration" (ECCV 2022), official code megvii-research/NAFNet
(`basicsr/models/archs/NAFNet_arch.py`, `Baseline_arch.py`, `local_arch.py`). The papers' four networks differ only in
the block's activation (`simplegate`, `gelu`, `relu`) and channel attention (`ca` = squeeze-excitation, `sca` =
simplified), so one block class takes both as options. Parameter names equal the official ones, so released
checkpoints load strictly:

    NAFNet   = activation "simplegate", attention "sca", dw_expand 2, ffn_expand 2
    Baseline = activation "gelu",       attention "ca",  dw_expand 1 (official default), ffn_expand 2
    Intermediate      = Baseline with attention "sca"      (paper 000; no official code)
    Intermediate+ReLU = Intermediate with activation "relu"

`train_size` switches the channel-attention pools from global to the official test-time local box mean
(`NAFNetLocal` / `BaselineLocal`, Chu et al. "Revisiting Global Statistics Aggregation", TLSC): window sizes are
1.5x the training-time feature size at each level. They are computed here from the configuration instead of the
official warm-up forward pass, which gives the same sizes and leaves the global RNG alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset

ACTIVATIONS = ("simplegate", "gelu", "relu")
ATTENTIONS = ("ca", "sca")


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-pixel layer norm over channels of an `(N, C, H, W)` map (biased variance), then a per-channel affine."""
    mu = x.mean(1, keepdim=True)
    centred = x - mu
    var = centred.pow(2).mean(1, keepdim=True)
    y = centred / (var + eps).sqrt()
    return weight.view(1, -1, 1, 1) * y + bias.view(1, -1, 1, 1)


class LayerNorm2d(nn.Module):
    """Channel layer norm of NAFNet (`arch_util.LayerNorm2d`, eps 1e-6).

    The official class uses a hand-written autograd Function; its backward is the exact analytic gradient, so plain
    autograd through `layer_norm_2d` gives the same values (checked by a float64 gradcheck and against the closed
    form in the tests).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise `x` `(N, C, H, W)` over C at every pixel."""
        return layer_norm_2d(x, self.weight, self.bias, self.eps)


class SimpleGate(nn.Module):
    """NAFNet's activation: split the channels in halves and multiply them."""

    def forward(self, x: Tensor) -> Tensor:
        """`(N, 2C, H, W) -> (N, C, H, W)`."""
        a, b = x.chunk(2, dim=1)
        return a * b


def box_mean(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """Stride-1 box mean of `(N, C, H, W)` by a summed-area table, replicate-padded back to H x W (official TLSC).

    The window is clipped to the map; the valid `(H-k1+1, W-k2+1)` result is padded by (left, right, top, bottom) =
    ((W-w')//2, (W-w'+1)//2, (H-h')//2, (H-h'+1)//2), as the official `AvgPool2d(auto_pad=True)`.
    """
    h, w = x.shape[-2:]
    k1, k2 = min(h, kernel[0]), min(w, kernel[1])
    table = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
    # The summation order (s4 + s1 - s2 - s3) follows the official code: cumulative sums lose float32 precision.
    out = (table[..., k1:, k2:] + table[..., :-k1, :-k2] - table[..., :-k1, k2:] - table[..., k1:, :-k2]) / (k1 * k2)
    oh, ow = out.shape[-2:]
    return F.pad(out, ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2), mode="replicate")


def fast_box_mean(x: Tensor, kernel: tuple[int, int], max_ratio: tuple[int, int]) -> Tensor:
    """The official `fast_imp=True` approximation: box mean on a strided sub-grid, nearest-upsampled, then padded.

    Not equivalent to `box_mean` (the official code says so); offered only because the official class has the flag.
    """
    h, w = x.shape[-2:]
    r1 = min(max_ratio[0], next(r for r in (5, 4, 3, 2, 1) if h % r == 0))
    r2 = min(max_ratio[1], next(r for r in (5, 4, 3, 2, 1) if w % r == 0))
    table = x[..., ::r1, ::r2].cumsum(dim=-1).cumsum(dim=-2)
    sh, sw = table.shape[-2:]
    k1, k2 = max(1, min(sh - 1, kernel[0] // r1)), max(1, min(sw - 1, kernel[1] // r2))
    if sh <= k1 or sw <= k2:  # the sub-grid is too small for any window: the official code would divide by zero
        return F.adaptive_avg_pool2d(x, 1).expand_as(x)
    out = (table[..., :-k1, :-k2] - table[..., :-k1, k2:] - table[..., k1:, :-k2] + table[..., k1:, k2:]) / (k1 * k2)
    out = F.interpolate(out, scale_factor=(r1, r2))
    oh, ow = out.shape[-2:]
    return F.pad(out, ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2), mode="replicate")


class AttentionPool(nn.Module):
    """The channel-attention pool: global average (`kernel=None`) or the official test-time local box mean.

    With a kernel, a map no larger than the kernel in both dimensions still gets the global mean, as in the
    official `local_arch.AvgPool2d`.
    """

    def __init__(self, kernel: tuple[int, int] | None = None, *, fast_imp: bool = False,
                 max_ratio: tuple[int, int] = (5, 5)) -> None:
        super().__init__()
        self.kernel = kernel
        self.fast_imp = fast_imp
        self.max_ratio = max_ratio

    def extra_repr(self) -> str:
        """Show the window in `print(model)`."""
        return "global" if self.kernel is None else f"kernel={self.kernel}, fast_imp={self.fast_imp}"

    def forward(self, x: Tensor) -> Tensor:
        """`(N, C, H, W)` -> `(N, C, 1, 1)` (global) or `(N, C, H, W)` (local)."""
        if self.kernel is None or (self.kernel[0] >= x.shape[-2] and self.kernel[1] >= x.shape[-1]):
            return F.adaptive_avg_pool2d(x, 1)
        if self.fast_imp:
            return fast_box_mean(x, self.kernel, self.max_ratio)
        return box_mean(x, self.kernel)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=True)


class NAFBlock(nn.Module):
    """One block of the family: LN, 1x1, 3x3 depthwise, activation, channel attention, 1x1, then a gated FFN.

    Both halves are residual with learnt per-channel scales `beta`, `gamma` (zero at construction, so each block
    starts as the identity). Parameter names are the official ones (`sca` for the simplified attention as in
    NAFBlock, `se` for squeeze-excitation as in BaselineBlock).
    """

    def __init__(self, c: int, *, dw_expand: int = 2, ffn_expand: int = 2, activation: str = "simplegate",
                 attention: str = "sca", drop_out_rate: float = 0.0) -> None:
        super().__init__()
        dw = c * dw_expand
        ffn = c * ffn_expand
        gate = activation == "simplegate"
        if gate and (dw % 2 or ffn % 2):
            raise RobustirError(f"activation 'simplegate' halves the channels: c*dw_expand={dw} and "
                                f"c*ffn_expand={ffn} must be even")
        att = dw // 2 if gate else dw  # channels after the activation
        self.conv1 = _conv1x1(c, dw)
        self.conv2 = nn.Conv2d(dw, dw, kernel_size=3, padding=1, groups=dw, bias=True)
        self.conv3 = _conv1x1(att, c)
        if attention == "sca":
            self.sca = nn.Sequential(AttentionPool(), _conv1x1(att, att))
        else:
            self.se = nn.Sequential(AttentionPool(), _conv1x1(att, att // 2), nn.ReLU(),
                                    _conv1x1(att // 2, att), nn.Sigmoid())
        self.act = SimpleGate() if gate else (nn.GELU() if activation == "gelu" else nn.ReLU())
        self.conv4 = _conv1x1(c, ffn)
        self.conv5 = _conv1x1(ffn // 2 if gate else ffn, c)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    @property
    def attention(self) -> nn.Sequential:
        """The channel-attention branch (`sca` or `se`)."""
        return self.sca if hasattr(self, "sca") else self.se

    def forward(self, inp: Tensor) -> Tensor:
        """`(N, c, H, W) -> (N, c, H, W)`."""
        x = self.act(self.conv2(self.conv1(self.norm1(inp))))
        x = x * self.attention(x)
        y = inp + self.dropout1(self.conv3(x)) * self.beta
        x = self.conv5(self.act(self.conv4(self.norm2(y))))
        return y + self.dropout2(x) * self.gamma


def local_pool_kernels(train_size: Sequence[int], levels: int) -> list[tuple[int, int]]:
    """Frozen TLSC windows per U-Net level (0 = full resolution, `levels` = middle), as the official converter.

    The official warm-up pass runs a `train_size` image through the padded network; the map at level l is then
    (padded size) / 2^l, and each window is that size times base/train with base = int(1.5 * train).
    """
    h, w = int(train_size[-2]), int(train_size[-1])
    mult = 2 ** levels
    hp, wp = h + (-h) % mult, w + (-w) % mult
    bh, bw = int(h * 1.5), int(w * 1.5)
    return [((hp >> lv) * bh // h, (wp >> lv) * bw // w) for lv in range(levels + 1)]


class NAFNet(nn.Module):
    """U-shaped encoder-decoder of the NAFNet family (official `NAFNet` / `Baseline` layout and parameter names).

    intro 3x3 conv; per level: blocks, then a 2x2 stride-2 conv doubling the channels; middle blocks; per level up:
    1x1 conv + PixelShuffle(2), additive skip, blocks; ending 3x3 conv plus the input (global residual). Inputs are
    zero-padded at the bottom/right to a multiple of 2^levels and the output is cropped back, as the official forward.

    Args:
        img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums: official constructor arguments.
        dw_expand, ffn_expand: channel expansions of the block (official NAFNet fixes 2, 2; Baseline's arguments).
        activation: 'simplegate' | 'gelu' | 'relu'. attention: 'sca' | 'ca'.
        train_size: None = global channel-attention pools (training form); `(N, C, H, W)` or `(H, W)` = the
            official test-time local pools (`NAFNetLocal`) with windows 1.5x the training feature sizes.
        fast_imp: the official non-equivalent fast local pool (only with `train_size`).
        drop_out_rate: dropout inside the blocks (official default 0).
        checkpointing: recompute each block in the backward pass (`torch.utils.checkpoint`, non-reentrant), trading
            time for memory in attacks on large images. Has no effect without autograd.
    """

    def __init__(self, *, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (), dw_expand: int = 2,
                 ffn_expand: int = 2, activation: str = "simplegate", attention: str = "sca",
                 train_size: Sequence[int] | None = None, fast_imp: bool = False, drop_out_rate: float = 0.0,
                 checkpointing: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise RobustirError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if attention not in ATTENTIONS:
            raise RobustirError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        enc_blk_nums, dec_blk_nums = [int(n) for n in enc_blk_nums], [int(n) for n in dec_blk_nums]
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise RobustirError(f"enc_blk_nums {enc_blk_nums} and dec_blk_nums {dec_blk_nums} must have the same "
                                f"length (one decoder stage per encoder stage)")
        if img_channel < 1 or width < 1 or dw_expand < 1 or ffn_expand < 1:
            raise RobustirError(f"img_channel, width, dw_expand, ffn_expand must be positive, got {img_channel}, "
                                f"{width}, {dw_expand}, {ffn_expand}")
        if train_size is not None and len(train_size) not in (2, 4):
            raise RobustirError(f"train_size must be (N, C, H, W) or (H, W), got {train_size}")
        if fast_imp and train_size is None:
            raise RobustirError("fast_imp applies to the local pools only: also pass train_size")
        self.img_channel = img_channel
        self.checkpointing = checkpointing
        opts = dict(dw_expand=dw_expand, ffn_expand=ffn_expand, activation=activation, attention=attention,
                    drop_out_rate=drop_out_rate)

        def stage(chan: int, num: int) -> nn.Sequential:
            return nn.Sequential(*[NAFBlock(chan, **opts) for _ in range(num)])

        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, bias=True)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(stage(chan, num))
            self.downs.append(nn.Conv2d(chan, 2 * chan, kernel_size=2, stride=2))
            chan *= 2
        self.middle_blks = stage(chan, middle_blk_num)
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, kernel_size=1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(stage(chan, num))
        self.padder_size = 2 ** len(self.encoders)
        self.train_size = tuple(train_size) if train_size is not None else None
        if train_size is not None:
            self._set_local_pools(train_size, fast_imp)

    def _set_local_pools(self, train_size: Sequence[int], fast_imp: bool) -> None:
        levels = len(self.encoders)
        kernels = local_pool_kernels(train_size, levels)
        h, w = int(train_size[-2]), int(train_size[-1])
        hp, wp = h + (-h) % self.padder_size, w + (-w) % self.padder_size
        staged = [(lv, s) for lv, s in enumerate(self.encoders)] + [(levels, self.middle_blks)]
        staged += [(levels - 1 - i, s) for i, s in enumerate(self.decoders)]
        for lv, seq in staged:
            ratio = (max(1, 5 * (hp >> lv) // h), max(1, 5 * (wp >> lv) // w))  # official fast_imp reduction cap
            for block in seq:
                pool = block.attention[0]
                pool.kernel, pool.fast_imp, pool.max_ratio = kernels[lv], fast_imp, ratio

    def _stage(self, seq: nn.Sequential, x: Tensor) -> Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            for block in seq:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return seq(x)

    def forward(self, inp: Tensor) -> Tensor:
        """`(N, img_channel, H, W) -> (N, img_channel, H, W)` for any H, W."""
        if inp.ndim != 4 or inp.shape[1] != self.img_channel:
            raise RobustirError(f"NAFNet: input must be (N, {self.img_channel}, H, W), got {tuple(inp.shape)}")
        h, w = inp.shape[-2:]
        inp = F.pad(inp, (0, (-w) % self.padder_size, 0, (-h) % self.padder_size))
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = self._stage(encoder, x)
            skips.append(x)
            x = down(x)
        x = self._stage(self.middle_blks, x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = self._stage(decoder, up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]


_DESC = "NAFNet family U-Net (official megvii-research/NAFNet names); pads to 2^levels internally"
_CALL = CallConvention(pad_multiple=1)  # the network pads and crops itself, as the official forward
_TINY = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}


register_model("NAFNet", task="deblur", description=_DESC + " (SimpleGate + SCA)", call=_CALL,
               test_spec={"type": "NAFNet", **_TINY})(NAFNet)


@register_model("NAFNetLocal", task="deblur", description=_DESC + "; test-time local pooling (TLSC)", call=_CALL,
                test_spec={"type": "NAFNetLocal", **_TINY, "train_size": [1, 3, 16, 16]})
def nafnet_local(*, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1, enc_blk_nums: Sequence[int] = (),
                 dec_blk_nums: Sequence[int] = (), train_size: Sequence[int] = (1, 3, 256, 256),
                 fast_imp: bool = False, dw_expand: int = 2, ffn_expand: int = 2, activation: str = "simplegate",
                 attention: str = "sca", drop_out_rate: float = 0.0, checkpointing: bool = False) -> NAFNet:
    """Official `NAFNetLocal`: NAFNet with local channel-attention pools frozen for `train_size`."""
    return NAFNet(img_channel=img_channel, width=width, middle_blk_num=middle_blk_num, enc_blk_nums=enc_blk_nums,
                  dec_blk_nums=dec_blk_nums, dw_expand=dw_expand, ffn_expand=ffn_expand, activation=activation,
                  attention=attention, train_size=train_size, fast_imp=fast_imp, drop_out_rate=drop_out_rate,
                  checkpointing=checkpointing)


@register_model("Baseline", task="deblur", description=_DESC + " (GELU + squeeze-excitation)", call=_CALL,
                test_spec={"type": "Baseline", **_TINY, "dw_expand": 2})
def baseline(*, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1, enc_blk_nums: Sequence[int] = (),
             dec_blk_nums: Sequence[int] = (), dw_expand: int = 1, ffn_expand: int = 2, activation: str = "gelu",
             attention: str = "ca", train_size: Sequence[int] | None = None, fast_imp: bool = False,
             drop_out_rate: float = 0.0, checkpointing: bool = False) -> NAFNet:
    """Official `Baseline` (GELU, SE attention); `attention='sca'` gives Intermediate, plus `activation='relu'`."""
    return NAFNet(img_channel=img_channel, width=width, middle_blk_num=middle_blk_num, enc_blk_nums=enc_blk_nums,
                  dec_blk_nums=dec_blk_nums, dw_expand=dw_expand, ffn_expand=ffn_expand, activation=activation,
                  attention=attention, train_size=train_size, fast_imp=fast_imp, drop_out_rate=drop_out_rate,
                  checkpointing=checkpointing)


@register_model("BaselineLocal", task="deblur", description=_DESC + "; Baseline with test-time local pooling",
                call=_CALL,
                test_spec={"type": "BaselineLocal", **_TINY, "dw_expand": 2, "train_size": [1, 3, 16, 16]})
def baseline_local(*, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                   enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (), dw_expand: int = 1,
                   ffn_expand: int = 2, train_size: Sequence[int] = (1, 3, 256, 256), fast_imp: bool = False,
                   activation: str = "gelu", attention: str = "ca", drop_out_rate: float = 0.0,
                   checkpointing: bool = False) -> NAFNet:
    """Official `BaselineLocal`: Baseline with local channel-attention pools frozen for `train_size`."""
    return baseline(img_channel=img_channel, width=width, middle_blk_num=middle_blk_num, enc_blk_nums=enc_blk_nums,
                    dec_blk_nums=dec_blk_nums, dw_expand=dw_expand, ffn_expand=ffn_expand, activation=activation,
                    attention=attention, train_size=train_size, fast_imp=fast_imp, drop_out_rate=drop_out_rate,
                    checkpointing=checkpointing)


_GOPRO = {"img_channel": 3, "width": 32, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 28],
          "dec_blk_nums": [1, 1, 1, 1]}
_GOPRO_TEST = {"train_size": [1, 3, 256, 256]}
_SMALL = {"img_channel": 3, "width": 16, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 2],
          "dec_blk_nums": [1, 1, 1, 1]}
_VARIANTS = {
    "nafnet": ({"type": "NAFNet"}, {"type": "NAFNetLocal"}, "NAFNet (SimpleGate + SCA)"),
    "baseline": ({"type": "Baseline", "dw_expand": 1, "ffn_expand": 2},
                 {"type": "BaselineLocal", "dw_expand": 1, "ffn_expand": 2}, "Baseline (GELU + SE)"),
    "intermediate": ({"type": "Baseline", "dw_expand": 1, "ffn_expand": 2, "attention": "sca"},
                     {"type": "BaselineLocal", "dw_expand": 1, "ffn_expand": 2, "attention": "sca"},
                     "Intermediate (Baseline with SCA, GELU kept; paper 000)"),
    "intermediate-relu": ({"type": "Baseline", "dw_expand": 1, "ffn_expand": 2, "attention": "sca",
                           "activation": "relu"},
                          {"type": "BaselineLocal", "dw_expand": 1, "ffn_expand": 2, "attention": "sca",
                           "activation": "relu"}, "Intermediate + ReLU (paper 000)"),
}
for _name, (_train, _test, _what) in _VARIANTS.items():
    register_preset(f"{_name}-gopro-w32", {**_train, **_GOPRO}, f"{_what}, GoPro width-32 configuration (training "
                    f"form, global pooling)")
    register_preset(f"{_name}-gopro-w32-local", {**_test, **_GOPRO, **_GOPRO_TEST},
                    f"{_what}, GoPro width-32 as evaluated officially (local pooling, train_size 256)")
    register_preset(f"{_name}-small", {**_train, **_SMALL}, f"{_what}, width 16 with 2 bottom blocks, for CPU "
                    f"training")
register_preset("nafnet-gopro-w64", {"type": "NAFNet", **_GOPRO, "width": 64},
                "NAFNet GoPro width-64 configuration (67,888,835 parameters)")
