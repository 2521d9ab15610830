"""Restormer: a U-shaped transformer with transposed (channel) attention and a gated-Dconv feed-forward network.

Zamir et al., "Restormer: Efficient Transformer for High-Resolution Image Restoration" (CVPR 2022), official code
swz30/Restormer (`basicsr/models/archs/restormer_arch.py`). Constructor arguments, defaults (the motion-deblurring
release) and parameter names are the official ones, so released checkpoints load strictly. The network needs H and W
divisible by 8; the uniform restorer reflect-pads the bottom/right to a multiple of 8 and crops, as the official
`Motion_Deblurring/test.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset

LAYER_NORM_TYPES = ("WithBias", "BiasFree")


class ChannelLayerNorm(nn.Module):
    """Layer norm over the last dim of `(N, L, C)` tokens (eps 1e-5, biased variance); BiasFree skips the centring."""

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None

    def forward(self, t: Tensor) -> Tensor:
        """`(N, L, C) -> (N, L, C)`."""
        if self.bias is not None:
            # The fused kernel computes the official formula; the unfused var over a short contiguous channel dim was
            # the single slowest op of small Restormers (14 % of a training step on CPU).
            return F.layer_norm(t, t.shape[-1:], self.weight, self.bias, eps=1e-5)
        var = t.var(-1, keepdim=True, unbiased=False)
        return t / torch.sqrt(var + 1e-5) * self.weight


class LayerNorm(nn.Module):
    """Restormer's per-pixel layer norm of `(N, C, H, W)` maps over channels (parameters under `body`, as official)."""

    def __init__(self, dim: int, layer_norm_type: str) -> None:
        super().__init__()
        self.body = ChannelLayerNorm(dim, with_bias=layer_norm_type != "BiasFree")

    def forward(self, x: Tensor) -> Tensor:
        """`(N, C, H, W) -> (N, C, H, W)`."""
        t = self.body(rearrange(x, "b c h w -> b (h w) c"))
        return rearrange(t, "b (h w) c -> b c h w", h=x.shape[-2])


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): 1x1 to 2*hidden, 3x3 depthwise, GELU(first half) * second half, 1x1."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)  # truncation, as the official code
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, dim, H, W) -> (N, dim, H, W)`."""
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): a C x C attention per head over L2-normalised spatial vectors."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise RobustirError(f"Restormer: {dim} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, dim, H, W) -> (N, dim, H, W)`."""
        h = x.shape[-2]
        q, k, v = (rearrange(t, "b (head c) h w -> b head c (h w)", head=self.num_heads)
                   for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = rearrange(attn @ v, "b head c (h w) -> b (head c) h w", head=self.num_heads, h=h)
        return self.project_out(out)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + MDTA(LN(x)), then + GDFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 layer_norm_type: str) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, layer_norm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, layer_norm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, dim, H, W) -> (N, dim, H, W)`."""
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _strips(height: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges `[lo, hi)` of at most `rows` rows covering `height`."""
    return [(lo, min(lo + rows, height)) for lo in range(0, height, rows)]


def _with_halo(x: Tensor, lo: int, hi: int) -> tuple[Tensor, slice]:
    """Rows `[lo, hi)` of x plus one row either side where there is one (the 3x3 depthwise convs' reach)."""
    a, b = max(lo - 1, 0), min(hi + 1, x.shape[-2])
    return x[..., a:b, :], slice(lo - a, lo - a + hi - lo)


def _qkv_part(attn: Attention, xn: Tensor, part: int) -> Tensor:
    """One of q (0), k (1), v (2) of MDTA: the matching rows of the 1x1 and depthwise 3x3 conv weights only."""
    dim = attn.project_out.out_channels
    sl = slice(part * dim, (part + 1) * dim)
    b1 = attn.qkv.bias[sl] if attn.qkv.bias is not None else None
    b2 = attn.qkv_dwconv.bias[sl] if attn.qkv_dwconv.bias is not None else None
    t = F.conv2d(xn, attn.qkv.weight[sl], b1)
    return F.conv2d(t, attn.qkv_dwconv.weight[sl], b2, padding=1, groups=dim)


def _qk_stats(block: TransformerBlock, x: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor]:
    """Strip `[lo, hi)`'s share of MDTA's global sums: q k^T per head, and the squared norms of q and k."""
    xs, core = _with_halo(x, lo, hi)
    xn = block.norm1(xs)
    heads = block.attn.num_heads
    q, k = (rearrange(_qkv_part(block.attn, xn, i)[..., core, :], "b (head c) h w -> b head c (h w)", head=heads)
            for i in (0, 1))
    return q @ k.transpose(-2, -1), q.square().sum(-1), k.square().sum(-1)


def _attn_strip(block: TransformerBlock, x: Tensor, attn_map: Tensor, lo: int, hi: int) -> Tensor:
    """Rows `[lo, hi)` of `x + MDTA(LN(x))` given the whole image's attention map."""
    xs, core = _with_halo(x, lo, hi)
    heads = block.attn.num_heads
    v = rearrange(_qkv_part(block.attn, block.norm1(xs), 2)[..., core, :], "b (head c) h w -> b head c (h w)",
                  head=heads)
    out = rearrange(attn_map @ v, "b head c (h w) -> b (head c) h w", head=heads, h=hi - lo)
    return x[..., lo:hi, :] + block.attn.project_out(out)


def _ffn_strip(block: TransformerBlock, x: Tensor, lo: int, hi: int) -> Tensor:
    """Rows `[lo, hi)` of `x + GDFN(LN(x))`."""
    xs, core = _with_halo(x, lo, hi)
    return x[..., lo:hi, :] + block.ffn(block.norm2(xs))[..., core, :]


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`: the no-recompute twin of `checkpoint` when no gradient is recorded."""
    return fn(*args)


def block_in_strips(block: TransformerBlock, x: Tensor, rows: int) -> Tensor:
    """`block(x)` computed in horizontal strips of `rows` rows, each recomputed in backward when grad is on.

    Equal to `block(x)` up to float rounding: layer norms and 1x1 convs are per pixel, the depthwise 3x3 convs get a
    one-row halo, and MDTA's attention map, a global reduction over pixels, is assembled from per-strip sums
    (q k^T and the squared norms that `F.normalize` divides by) before a second pass applies it. Peak memory is
    then a strip's intermediates instead of a whole image's: the full-frame attack's memory mode.
    """
    bounds = _strips(x.shape[-2], rows)
    run = functools.partial(checkpoint, use_reentrant=False) if torch.is_grad_enabled() else _call
    gram = q2 = k2 = None
    for lo, hi in bounds:
        g, a, b = run(_qk_stats, block, x, lo, hi)
        gram, q2, k2 = (g, a, b) if gram is None else (gram + g, q2 + a, k2 + b)
    # F.normalize(q, dim=-1) divides by max(||q||, 1e-12); the product of normalised q and k is the Gram matrix
    # divided by both norms
    qn, kn = q2.sqrt().clamp_min(1e-12), k2.sqrt().clamp_min(1e-12)
    attn_map = (gram / (qn[..., :, None] * kn[..., None, :]) * block.attn.temperature).softmax(dim=-1)
    mid = torch.cat([run(_attn_strip, block, x, attn_map, lo, hi) for lo, hi in bounds], dim=-2)
    return torch.cat([run(_ffn_strip, block, mid, lo, hi) for lo, hi in bounds], dim=-2)


class Resample(nn.Module):
    """Official Downsample / Upsample: a bias-free 3x3 conv then a pixel (un)shuffle, under `body`."""

    def __init__(self, cin: int, cout: int, shuffle: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False), shuffle)

    def forward(self, x: Tensor) -> Tensor:
        """Halve (unshuffle) or double (shuffle) the spatial size."""
        return self.body(x)


class PatchEmbed(nn.Module):
    """Overlapped patch embedding: a bias-free 3x3 conv under `proj`."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, cin, H, W) -> (N, dim, H, W)`."""
        return self.proj(x)


@register_model("Restormer", task="deblur",
                description="Restormer (swz30/Restormer names); the restorer reflect-pads to x8 as the official test",
                call=CallConvention(pad_multiple=8, pad_mode="reflect"),
                test_spec={"type": "Restormer", "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
                           "heads": [1, 2, 2, 4]})
class Restormer(nn.Module):
    """Restormer with the official constructor and parameter names (defaults: the motion-deblurring release).

    Levels work at dim, 2dim, 4dim, 8dim channels; the decoder concatenates [upsampled, skip], reducing channels by a
    1x1 conv at levels 3 and 2 but not at level 1, so decoder level 1 and refinement run at 2*dim with heads[0].
    Output = conv(refined) + input (or + a skip conv of the embedding for the dual-pixel task). H and W must be
    multiples of 8. `checkpointing=True` recomputes every transformer block in backward (memory for attacks).
    `strip_rows=R` (robustir extension, numerically equal up to float rounding) computes every transformer block on
    maps taller than R rows in horizontal strips of R rows (`block_in_strips`), each recomputed in backward: peak
    memory becomes a strip's intermediates plus the blocks' inputs and outputs, which is what lets a full-frame
    (720p) attack fit in CPU RAM; with `checkpointing` too, the blocks' outputs are recomputed as well (least memory,
    one more forward).
    """

    padder_size = 8  # spatial multiple the network needs (three 2x levels); read by tiled inference

    def __init__(self, *, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = "WithBias", dual_pixel_task: bool = False,  # noqa: N803 (official name)
                 checkpointing: bool = False, strip_rows: int = 0) -> None:
        super().__init__()
        if isinstance(strip_rows, bool) or not isinstance(strip_rows, int) or strip_rows < 0:
            raise RobustirError(f"Restormer: strip_rows must be a non-negative integer (0 = off), got {strip_rows!r}")
        self.strip_rows = strip_rows
        if len(num_blocks) != 4 or len(heads) != 4:
            raise RobustirError(f"Restormer: num_blocks and heads need 4 entries (one per level), got {num_blocks}, "
                                f"{heads}")
        if LayerNorm_type not in LAYER_NORM_TYPES:
            raise RobustirError(f"Restormer: LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}")
        self.inp_channels = inp_channels
        self.checkpointing = checkpointing

        def level(width: int, n_heads: int, num: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(width, n_heads, ffn_expansion_factor, bias, LayerNorm_type)
                                   for _ in range(num)])

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        self.patch_embed = PatchEmbed(inp_channels, dim)
        self.encoder_level1 = level(d1, heads[0], num_blocks[0])
        self.down1_2 = Resample(d1, d1 // 2, nn.PixelUnshuffle(2))
        self.encoder_level2 = level(d2, heads[1], num_blocks[1])
        self.down2_3 = Resample(d2, d2 // 2, nn.PixelUnshuffle(2))
        self.encoder_level3 = level(d3, heads[2], num_blocks[2])
        self.down3_4 = Resample(d3, d3 // 2, nn.PixelUnshuffle(2))
        self.latent = level(d4, heads[3], num_blocks[3])
        self.up4_3 = Resample(d4, d4 * 2, nn.PixelShuffle(2))
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = level(d3, heads[2], num_blocks[2])
        self.up3_2 = Resample(d3, d3 * 2, nn.PixelShuffle(2))
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = level(d2, heads[1], num_blocks[1])
        self.up2_1 = Resample(d2, d2 * 2, nn.PixelShuffle(2))
        self.decoder_level1 = level(d2, heads[0], num_blocks[0])
        self.refinement = level(d2, heads[0], num_refinement_blocks)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, padding=1, bias=bias)

    def _run(self, seq: nn.Sequential, x: Tensor) -> Tensor:
        rows = self.strip_rows
        if rows and x.shape[-2] > rows:
            for block in seq:
                if self.checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block_in_strips, block, x, rows, use_reentrant=False)
                else:
                    x = block_in_strips(block, x, rows)
            return x
        if self.checkpointing and torch.is_grad_enabled():
            for block in seq:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return seq(x)

    def forward(self, inp_img: Tensor) -> Tensor:
        """`(N, inp_channels, H, W) -> (N, out_channels, H, W)`, H and W multiples of 8."""
        if inp_img.ndim != 4 or inp_img.shape[1] != self.inp_channels:
            raise RobustirError(f"Restormer: input must be (N, {self.inp_channels}, H, W), got "
                                f"{tuple(inp_img.shape)}")
        if inp_img.shape[-2] % 8 or inp_img.shape[-1] % 8:
            raise RobustirError(f"Restormer: H and W must be multiples of 8, got {tuple(inp_img.shape[-2:])}; use "
                                f"robustir.models.restorer(...) to pad and crop")
        emb = self.patch_embed(inp_img)
        e1 = self._run(self.encoder_level1, emb)
        e2 = self._run(self.encoder_level2, self.down1_2(e1))
        e3 = self._run(self.encoder_level3, self.down2_3(e2))
        x = self._run(self.latent, self.down3_4(e3))
        x = self._run(self.decoder_level3, self.reduce_chan_level3(torch.cat([self.up4_3(x), e3], 1)))
        x = self._run(self.decoder_level2, self.reduce_chan_level2(torch.cat([self.up3_2(x), e2], 1)))
        x = self._run(self.decoder_level1, torch.cat([self.up2_1(x), e1], 1))
        x = self._run(self.refinement, x)
        if self.dual_pixel_task:
            return self.output(x + self.skip_conv(emb))
        return self.output(x) + inp_img


register_preset("restormer-gopro", {"type": "Restormer"},
                "Restormer motion-deblurring release configuration (class defaults, 26,126,644 parameters)")
register_preset("restormer-small", {"type": "Restormer", "dim": 16, "num_blocks": [1, 2, 2, 2],
                                    "num_refinement_blocks": 1, "heads": [1, 2, 4, 8]},
                "Small Restormer (dim 16) for CPU training")
