"""SwinIR (Liang et al., "SwinIR: Image restoration using Swin Transformer", ICCVW 2021) for denoising and JPEG
artifact removal (upscale 1, `upsampler=""`), equal to JingyunLiang/SwinIR `models/network_swinir.py` @ 6545850f.

Shallow conv -> residual Swin Transformer blocks (RSTB: windowed self-attention with relative position bias, every
second block cyclically shifted by window_size // 2 with the shift mask) -> conv -> global residual. The model
reflect-pads its input to a multiple of `window_size` and crops back, as the official forward does. The uniform
restorer instead applies the official test script's flip padding (`main_test_swinir.py`), which always adds 1 to
`window_size` mirrored rows/columns, so published numbers are reproduced with the same borders.

Parameter and buffer names follow the official code (`layers.<i>.residual_group.blocks.<j>.attn.qkv.weight`, ...),
including the `relative_position_index` and `attn_mask` buffers that released checkpoints (`{"params": ...}`) carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset

_RGB_MEAN = (0.4488, 0.4371, 0.4040)
_MASK_VALUE = -100.0


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    """`v` as an (h, w) pair."""
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample while training (identity in eval)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        """Zero the branch of a random subset of samples and rescale the rest."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def window_partition(x: Tensor, ws: int) -> Tensor:
    """`(B, H, W, C)` -> `(B * nW, ws * ws, C)`, windows in row-major order."""
    return rearrange(x, "b (nh p) (nw q) c -> (b nh nw) (p q) c", p=ws, q=ws)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of `window_partition`: `(B * nW, ws * ws, C)` -> `(B, H, W, C)`."""
    return rearrange(windows, "(b nh nw) (p q) c -> b (nh p) (nw q) c", nh=h // ws, nw=w // ws, p=ws, q=ws)


def relative_position_index(ws: int) -> Tensor:
    """`(ws*ws, ws*ws)` int64 index into the `(2ws-1)^2` bias table for every pair of tokens in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N), each in [0, 2ws-2]
    return rel[0] * (2 * ws - 1) + rel[1]


def shift_attention_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    """`(nW, ws*ws, ws*ws)` mask for shifted-window attention: 0 within a region, -100 across regions."""
    region = torch.zeros(1, h, w, 1)
    bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for wsl in bounds:
            region[:, hs, wsl, :] = label
            label += 1
    win = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.full_like(diff, _MASK_VALUE), torch.zeros_like(diff))


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout (keys `fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """Token-wise feed-forward."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise RobustirError(f"SwinIR: embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`x (B*nW, N, C)`, `mask (nW, N, N)` or None -> `(B*nW, N, C)`."""
        bw, n, c = x.shape
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).reshape(bw, -1, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = rearrange(attn @ v, "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP with DropPath; keys `norm1`, `attn`, `norm2`, `mlp`, `attn_mask`."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float,
                 attn_drop: float, drop_path: float, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.shift_size = shift_size
        if min(input_resolution) <= window_size:
            # as the official block: a training size no larger than the window means one unshifted window
            self.shift_size = 0
            self.window_size = min(input_resolution)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = (shift_attention_mask(*input_resolution, self.window_size, self.shift_size)
                if self.shift_size > 0 else None)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """`x (B, H*W, C)` on an `x_size = (H, W)` grid (multiples of the window) -> same shape."""
        h, w = x_size
        b, _, c = x.shape
        ws, shift = self.window_size, self.shift_size
        t = self.norm1(x).reshape(b, h, w, c)
        if shift > 0:
            t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
        if shift == 0:
            mask = None
        elif tuple(x_size) == tuple(self.input_resolution):
            mask = self.attn_mask
        else:
            mask = shift_attention_mask(h, w, ws, shift).to(device=x.device, dtype=x.dtype)
        t = window_reverse(self.attn(window_partition(t, ws), mask=mask), ws, h, w)
        if shift > 0:
            t = torch.roll(t, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(t.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating shift 0 and window_size // 2 (key `blocks.<j>`)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float,
                 drop_path: Sequence[float], norm_layer: Callable[[int], nn.Module], use_checkpoint: bool) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path[i], norm_layer)
            for i in range(depth)])

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """Run the blocks (optionally with activation checkpointing)."""
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(blk, x, x_size, use_reentrant=False)
            else:
                x = blk(x, x_size)
        return x


def _resi_conv(dim: int, mode: str) -> nn.Module:
    """The conv before each residual connection: '1conv' or the cheaper '3conv' bottleneck."""
    if mode == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if mode == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise RobustirError(f"SwinIR: resi_connection must be '1conv' or '3conv', got {mode!r}")


class RSTB(nn.Module):
    """Residual Swin Transformer Block: `x + tokens(conv(image(residual_group(x))))`."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float,
                 drop_path: Sequence[float], norm_layer: Callable[[int], nn.Module], use_checkpoint: bool,
                 resi_connection: str) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias,
                                         qk_scale, drop, attn_drop, drop_path, norm_layer, use_checkpoint)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        """Tokens `(B, H*W, C)` -> same."""
        h, w = x_size
        t = rearrange(self.residual_group(x, x_size), "b (h w) c -> b c h w", h=h, w=w)
        return rearrange(self.conv(t), "b c h w -> b (h w) c") + x


class _PatchEmbedNorm(nn.Module):
    """Holder of the LayerNorm after patch embedding (official `patch_embed.norm`)."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] | None) -> None:
        super().__init__()
        self.norm = norm_layer(dim) if norm_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` -> normalised tokens `(B, H*W, C)`."""
        x = rearrange(x, "b c h w -> b (h w) c")
        return self.norm(x) if self.norm is not None else x


def symmetric_pad_to(x: Tensor, h: int, w: int) -> Tensor:
    """Extend `x` at the bottom/right to (h, w) with mirrored copies that repeat the edge pixel (flip padding)."""
    for dim, size in ((2, h), (3, w)):
        while x.shape[dim] < size:
            x = torch.cat((x, torch.flip(x, dims=(dim,))), dim=dim)
        x = x.narrow(dim, 0, size)
    return x


def _flip_pad_call(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    """The official test script's padding: append flipped copies up to `(H // ws + 1) * ws`, run, crop back."""
    ws = net.window_size
    h, w = y.shape[-2:]
    out = net(symmetric_pad_to(y, (h // ws + 1) * ws, (w // ws + 1) * ws))
    return out[..., :h, :w]


@register_model("SwinIR", task="denoise",
                description="SwinIR (Liang et al. 2021): residual Swin Transformer blocks, denoising/JPEG (upscale 1)",
                call=CallConvention(adapter=_flip_pad_call),
                test_spec={"type": "SwinIR", "upscale": 1, "in_chans": 1, "img_size": 16, "window_size": 4,
                           "img_range": 1.0, "depths": [2], "embed_dim": 8, "num_heads": [2], "mlp_ratio": 2,
                           "upsampler": "", "resi_connection": "1conv"})
class SwinIR(nn.Module):
    """SwinIR for restoration at scale 1 (`upsampler=""`): `x + conv_last(conv_after_body(features) + shallow)`.

    Args are the official constructor's (defaults included). Only `upsampler=""` (denoising / JPEG) is supported;
    the super-resolution heads are outside robustir's scope and raise an error.
        img_size: training patch size; fixes the stored `attn_mask` buffers (other sizes recompute the mask).
        patch_size: patch size (1; only scales the nominal resolution, as in the official code).
        in_chans: image channels (1 gray, 3 colour; colour inputs are centred on the DIV2K mean).
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale: transformer configuration.
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (inactive in eval).
        norm_layer: normalisation class (LayerNorm).
        ape: learned absolute position embedding (needs inputs of exactly img_size).
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: activation checkpointing while training.
        upscale: kept for the official signature; the output is cropped to `H * upscale` as there.
        img_range: 1 or 255.
        upsampler: must be "".
        resi_connection: '1conv' or '3conv'.
    """

    def __init__(self, *, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (6, 6, 6, 6), num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, upscale: int = 2, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv") -> None:
        super().__init__()
        if upsampler not in ("", None):
            raise RobustirError(f"SwinIR: upsampler {upsampler!r} (super-resolution) is not supported; robustir "
                                f"builds the restoration form upsampler='' (denoising / JPEG, scale 1)")
        if len(depths) != len(num_heads):
            raise RobustirError(f"SwinIR: depths {list(depths)} and num_heads {list(num_heads)} must have the same "
                                f"length")
        self.in_chans = in_chans
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size
        self.ape = ape
        mean = torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)  # not in the official state dict

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        img, patch = _pair(img_size), _pair(patch_size)
        resolution = (img[0] // patch[0], img[1] // patch[1])
        self.patches_resolution = resolution
        self.patch_embed = _PatchEmbedNorm(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RSTB(embed_dim, resolution, depth, heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                                    drop_rate, attn_drop_rate, dpr[start:start + depth], norm_layer, use_checkpoint,
                                    resi_connection))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Deep features `(B, C, H, W)` -> `(B, C, H, W)`."""
        h, w = x.shape[-2:]
        t = self.patch_embed(x)
        if self.ape:
            t = t + self.absolute_pos_embed
        t = self.pos_drop(t)
        for layer in self.layers:
            t = layer(t, (h, w))
        return rearrange(self.norm(t), "b (h w) c -> b c h w", h=h, w=w)

    def forward(self, x: Tensor) -> Tensor:
        """Restore a `(N, in_chans, H, W)` batch of any size (reflect-padded to the window internally); no clipping."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise RobustirError(f"SwinIR: input must have shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        if ph or pw:
            if ph >= h or pw >= w:
                raise RobustirError(f"SwinIR: input {h}x{w} is too small to reflect-pad to a multiple of "
                                    f"{self.window_size}; use robustir.models.restorer(...), which pads any size")
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        shallow = self.conv_first(x)
        res = self.conv_after_body(self.forward_features(shallow)) + shallow
        x = x + self.conv_last(res)
        x = x / self.img_range + mean
        return x[:, :, :h * self.upscale, :w * self.upscale]


_GRAY_DN = {"type": "SwinIR", "upscale": 1, "in_chans": 1, "img_size": 128, "window_size": 8, "img_range": 1.0,
            "depths": [6, 6, 6, 6, 6, 6], "embed_dim": 180, "num_heads": [6, 6, 6, 6, 6, 6], "mlp_ratio": 2,
            "upsampler": "", "resi_connection": "1conv"}
register_preset("swinir-gray-dn", _GRAY_DN,
                "SwinIR-M gray denoising (004_grayDN_DFWB_s128w8_SwinIR-M_noise15/25/50; 11,497,681 parameters)")
register_preset("swinir-color-dn", {**_GRAY_DN, "in_chans": 3},
                "SwinIR-M colour denoising (005_colorDN_DFWB_s128w8_SwinIR-M_noise15/25/50)")
