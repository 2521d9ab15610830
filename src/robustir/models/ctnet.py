"""CTNet (Tian et al., "A cross Transformer for image denoising", Information Fusion 2024), equal to
hellloxiaotian/CTNet `model/gtd.py` (class `GDTD`; `CTNet` here).

Three serial/parallel branches of conv ResBlocks and patch-token Transformer encoders (`VisionEncoder`: unfold into
patch_dim x patch_dim patches, learned position embedding, pre-norm encoder layers, fold back) exchange features
through depthwise-5x5 + 1x1 fusion convs; the output is `x - tail(...)`. The official constructor takes an argparse
namespace; here its attributes are keywords with the `option.py` defaults (n_colors 3 there; the gray model uses 1).

The network itself only accepts inputs of exactly `patch_size x patch_size`. Whole images are denoised by the
official test-time tiling (`Model.forward_chop`: overlapping tiles with stride patch_size/4, centre crops averaged,
border strips from dedicated tile rows); `forward_chop` here computes the same stitching on any device and batch
size, and the uniform restorer uses it.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, register_model, register_preset


def _conv(in_ch: int, out_ch: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    """Conv with 'same' zero padding (official `default_conv`)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)


class ResBlock(nn.Module):
    """`x + conv(relu(conv(x)))` (keys `body.0`, `body.2`)."""

    def __init__(self, n_feats: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats, kernel_size), nn.ReLU(), _conv(n_feats, n_feats, kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        """Residual conv block."""
        return self.body(x) + x


def _fusion(n_feats: int, parts: int) -> nn.Sequential:
    """Depthwise 5x5 conv over the concatenated branches, then a 1x1 conv back to n_feats."""
    ch = n_feats * parts
    return nn.Sequential(nn.Conv2d(ch, ch, 5, padding=2, groups=ch), _conv(ch, n_feats, 1))


class LearnedPositionalEncoding(nn.Module):
    """Learned position embedding table with a `position_ids` buffer (keys `pe.weight`, `position_ids`)."""

    def __init__(self, seq_length: int, embedding_dim: int) -> None:
        super().__init__()
        self.pe = nn.Embedding(seq_length, embedding_dim)
        self.register_buffer("position_ids", torch.arange(seq_length).unsqueeze(0))

    def forward(self) -> Tensor:
        """`(1, L, E)` embeddings."""
        return self.pe(self.position_ids)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm layer: `src + MHA(q=k=LN1(src)+pos, v=LN1(src))`, then `+ linear2(relu(linear1(LN2(src))))`."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, no_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, bias=False)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1: nn.Module = nn.Identity() if no_norm else nn.LayerNorm(d_model)
        self.norm2: nn.Module = nn.Identity() if no_norm else nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.self_attn.in_proj_weight, a=math.sqrt(5))

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """Tokens `(L, B, E)` -> same."""
        s = self.norm1(src)
        q = s if pos is None else s + pos
        src = src + self.dropout1(self.self_attn(q, q, s, need_weights=False)[0])
        s = self.norm2(src)
        return src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(s)))))


class TransformerEncoder(nn.Module):
    """Stack of identical-at-init layers; with >= 4 layers (and residuals on) the first four outputs are summed."""

    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, no_residual: bool) -> None:
        super().__init__()
        # deep copies of one layer, as the official `_get_clones`: every layer starts from the same weights
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.no_residual = no_residual

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """Tokens `(L, B, E)` -> same."""
        if self.no_residual or len(self.layers) < 4:
            for layer in self.layers:
                src = layer(src, pos)
            return src
        outs = [src]
        for layer in self.layers[:4]:
            outs.append(layer(outs[-1], pos))
        out = sum(outs[1:], outs[0])
        for layer in self.layers[4:]:
            out = layer(out, pos)
        return out


class VisionEncoder(nn.Module):
    """Patch tokens of a `(B, C, S, S)` map through a Transformer encoder and back to `(B, C, S, S)`.

    With `mlp=False` a residual linear encoding precedes and a residual MLP head follows the encoder (official naming:
    the flag means "no extra MLP").
    """

    def __init__(self, *, img_dim: int, patch_dim: int, num_channels: int, embedding_dim: int, num_heads: int,
                 num_layers: int, hidden_dim: int, dropout_rate: float = 0.0, no_norm: bool = False,
                 mlp: bool = False, pos_every: bool = False, no_pos: bool = False, no_residual: bool = False) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise RobustirError(f"CTNet: the embedding dim n_feats*patch_dim^2 = {embedding_dim} must be divisible "
                                f"by num_heads = {num_heads}")
        if img_dim % patch_dim:
            raise RobustirError(f"CTNet: patch_size ({img_dim}) must be a multiple of patch_dim ({patch_dim})")
        self.img_dim = img_dim
        self.patch_dim = patch_dim
        self.mlp = mlp
        self.pos_every = pos_every
        self.no_pos = no_pos
        self.flatten_dim = patch_dim * patch_dim * num_channels
        seq_length = (img_dim // patch_dim) ** 2
        if not mlp:
            self.linear_encoding = nn.Linear(self.flatten_dim, embedding_dim)
            self.mlp_head = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.Dropout(dropout_rate), nn.ReLU(),
                                          nn.Linear(hidden_dim, self.flatten_dim), nn.Dropout(dropout_rate))
        layer = TransformerEncoderLayer(embedding_dim, num_heads, hidden_dim, dropout_rate, no_norm)
        self.encoder = TransformerEncoder(layer, num_layers, no_residual)
        if not no_pos:
            self.position_encoding = LearnedPositionalEncoding(seq_length, embedding_dim)
        self.dropout_layer1 = nn.Dropout(dropout_rate)
        if no_norm:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.normal_(m.weight, std=1.0 / m.weight.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, S, S)` -> `(B, C, S, S)`."""
        tokens = F.unfold(x, self.patch_dim, stride=self.patch_dim).permute(2, 0, 1)  # (L, B, C*p*p)
        if not self.mlp:
            tokens = self.dropout_layer1(self.linear_encoding(tokens)) + tokens
        if self.no_pos:
            tokens = self.encoder(tokens)
        else:
            pos = self.position_encoding().transpose(0, 1)  # (L, 1, E)
            tokens = self.encoder(tokens, pos) if self.pos_every else self.encoder(tokens + pos)
        if not self.mlp:
            tokens = self.mlp_head(tokens) + tokens
        return F.fold(tokens.permute(1, 2, 0), self.img_dim, self.patch_dim, stride=self.patch_dim)


def _ctnet_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> Tensor:
    """Uniform restorer call: the official overlapping-tile stitching (`forward_chop`)."""
    return forward_chop(net, y)


@register_model("CTNet", task="denoise",
                description="CTNet (Tian et al. 2024): cross Transformer denoiser, conv + patch-token branches",
                call=CallConvention(adapter=_ctnet_adapter),
                test_spec={"type": "CTNet", "n_colors": 1, "n_feats": 2, "patch_size": 12, "patch_dim": 3,
                           "num_heads": 2})
class CTNet(nn.Module):
    """CTNet (official `GDTD`): `x - tail(branches(x))` on `patch_size x patch_size` inputs; no clipping.

    Args (the attributes of the official argparse namespace, `option.py` defaults):
        n_colors: image channels (3 in option.py; the gray models use 1).
        n_feats: conv width (64); the token size is n_feats * patch_dim^2.
        patch_size: side of the square input (48).
        patch_dim: side of a token patch (3).
        num_heads: attention heads (12).
        dropout_rate: dropout in the encoders (0).
        no_norm: drop the LayerNorms.
        no_mlp: the flag passed as `mlp` to the last two encoders (False there means they get the extra MLP).
        pos_every: add the position embedding to q and k in every layer; the official code cannot run with it (the
            last two encoders have no position embedding), so it is rejected.
        no_pos: drop the position embeddings.
        no_residual: disable the residual sum in encoders with >= 4 layers (all have 1 or 2 here).
    """

    def __init__(self, *, n_colors: int = 3, n_feats: int = 64, patch_size: int = 48, patch_dim: int = 3,
                 num_heads: int = 12, dropout_rate: float = 0.0, no_norm: bool = False, no_mlp: bool = False,
                 pos_every: bool = False, no_pos: bool = False, no_residual: bool = False) -> None:
        super().__init__()
        for name, value in (("n_colors", n_colors), ("n_feats", n_feats), ("patch_size", patch_size),
                            ("patch_dim", patch_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RobustirError(f"CTNet: {name} must be a positive integer, got {value!r}")
        if pos_every:
            raise RobustirError("CTNet: pos_every=True cannot run in the official code (body3_3/body3_4 have no "
                                "position embedding to add); use the published pos_every=False")
        self.n_colors = n_colors
        self.patch_size = patch_size
        emb = n_feats * patch_dim * patch_dim

        def encoder(num_layers: int, mlp: bool = True, pos_off: bool = no_pos) -> VisionEncoder:
            return VisionEncoder(img_dim=patch_size, patch_dim=patch_dim, num_channels=n_feats, embedding_dim=emb,
                                 num_heads=num_heads, num_layers=num_layers, hidden_dim=4 * emb,
                                 dropout_rate=dropout_rate, mlp=mlp, pos_every=pos_every, no_pos=pos_off,
                                 no_norm=no_norm, no_residual=no_residual)

        self.head1 = _conv(n_colors, n_feats, 3)
        self.head1_1 = ResBlock(n_feats)
        self.head1_3 = encoder(1)
        self.body1_1 = nn.Sequential(ResBlock(n_feats), _conv(n_feats, n_feats, 3), nn.ReLU())
        self.body1_2 = nn.Sequential(encoder(1), ResBlock(n_feats))
        self.body2_1 = nn.Sequential(ResBlock(n_feats), encoder(1))
        self.fusion2_1 = _fusion(n_feats, 2)
        self.body2_2 = nn.Sequential(ResBlock(n_feats), encoder(1))
        self.fusion2_2 = _fusion(n_feats, 2)
        self.body2_3 = encoder(1)
        self.body3_1 = nn.Sequential(_conv(n_feats, n_feats, 3), nn.ReLU(), encoder(2))
        self.fusion3_1 = _fusion(n_feats, 2)
        self.body3_2 = nn.Sequential(_conv(n_feats, n_feats, 3), nn.ReLU(), encoder(2))
        self.fusion3_2 = _fusion(n_feats, 2)
        self.body3_3 = encoder(1, mlp=no_mlp, pos_off=True)
        self.fusion3_3 = _fusion(n_feats, 3)
        self.body3_4 = encoder(1, mlp=no_mlp, pos_off=True)
        self.tail = _conv(n_feats, n_colors, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise a `(N, n_colors, patch_size, patch_size)` batch; use `forward_chop` for whole images."""
        if x.ndim != 4 or x.shape[1] != self.n_colors or x.shape[-2:] != (self.patch_size, self.patch_size):
            raise RobustirError(f"CTNet: input must have shape (N, {self.n_colors}, {self.patch_size}, "
                                f"{self.patch_size}), got {tuple(x.shape)}; whole images go through "
                                f"robustir.models.ctnet.forward_chop or robustir.models.restorer(...)")
        f = self.head1_3(self.head1_1(self.head1(x)))
        g1, g2, g3 = self.body1_1(f), self.body2_1(f), self.body3_1(f)
        g2 = self.body2_2(self.fusion2_1(torch.cat((g1, g2), 1)))
        g3 = self.body3_2(self.fusion3_1(torch.cat((g2, g3), 1)))
        g1 = self.body1_2(g1)
        g2 = self.body2_3(self.fusion2_2(torch.cat((g1, g2), 1)))
        g3 = self.body3_3(self.fusion3_2(torch.cat((g2, g3), 1)))
        g3 = self.body3_4(self.fusion3_3(torch.cat((g1, g2, g3), 1)))
        return x - self.tail(g3)


# ---- the official test-time tiling (model/__init__.py: Model.forward_chop / cut_h / cut_w), any device and batch ----

def _tiles(x: Tensor, kh: int, kw: int, stride: int) -> tuple[Tensor, int]:
    """Overlapping `(kh, kw)` tiles with `stride` in F.unfold order: `(B*L, C, kh, kw)` and L."""
    b, c = x.shape[:2]
    cols = F.unfold(x, (kh, kw), stride=stride)  # (B, C*kh*kw, L)
    n = cols.shape[-1]
    return cols.transpose(1, 2).reshape(b * n, c, kh, kw), n


def _fold(tiles: Tensor, b: int, size: tuple[int, int], stride: int) -> Tensor:
    """Sum `(B*L, C, kh, kw)` tiles back onto a `(B, C, *size)` canvas (F.fold order)."""
    bl, c, kh, kw = tiles.shape
    cols = tiles.reshape(b, bl // b, c * kh * kw).transpose(1, 2)
    return F.fold(cols, size, (kh, kw), stride=stride)


def _fold_mean(tiles: Tensor, b: int, size: tuple[int, int], stride: int) -> Tensor:
    """Average of overlapping tiles on a `(B, C, *size)` canvas."""
    return _fold(tiles, b, size, stride) / _fold(torch.ones_like(tiles), b, size, stride)


def _run_tiles(net: nn.Module, tiles: Tensor, chunk: int) -> Tensor:
    """The network on `(T, C, p, p)` tiles, `chunk` at a time."""
    return torch.cat([net(tiles[i:i + chunk]) for i in range(0, tiles.shape[0], chunk)], dim=0)


def _strip(net: nn.Module, x: Tensor, p: int, s: int, along_w: bool, chunk: int) -> Tensor:
    """A p-wide strip restored by one row (or column) of tiles: single tiles at the two ends, centre crops averaged.

    `x` is `(B, C, p, W)` when `along_w`, else `(B, C, H, p)`; the result covers the tiled length (a multiple of s
    past p).
    """
    b = x.shape[0]
    length = x.shape[3] if along_w else x.shape[2]
    used = length - (length - p) % s
    out_tiles = _run_tiles(net, _tiles(x, p, p, s)[0], chunk)
    full = (p, used) if along_w else (used, p)
    y = _fold(out_tiles, b, full, s)
    if along_w:
        inner = _fold_mean(out_tiles[..., :, s:p - s].contiguous(), b, (p, used - 2 * s), s)
        y[..., :, s:used - s] = inner
    else:
        inner = _fold_mean(out_tiles[..., s:p - s, :].contiguous(), b, (used - 2 * s, p), s)
        y[..., s:used - s, :] = inner
    return y


def forward_chop(net: nn.Module, x: Tensor, *, chunk: int = 32) -> Tensor:
    """Restore a whole `(B, C, H, W)` image with a patch-size network, stitching tiles as CTNet's official
    `Model.forward_chop` does (tile stride patch_size/4; centre crops averaged; top/left/bottom/right border strips
    from dedicated strip passes). Images smaller than the patch are reflect-padded (replicate when too small) and
    cropped back. `chunk` tiles go through the network at once (the result does not depend on it)."""
    p = int(net.patch_size)
    if p % 4:
        raise RobustirError(f"CTNet tiling needs patch_size divisible by 4 (stride patch_size/4), got {p}")
    s = p // 4
    b, _, h0, w0 = x.shape
    if h0 < p or w0 < p:
        ph, pw = max(p - h0, 0), max(p - w0, 0)
        mode = "reflect" if ph < h0 and pw < w0 else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    h, w = x.shape[-2:]
    h_cut, w_cut = (h - p) % s, (w - p) % s
    hv, wv = h - h_cut, w - w_cut  # the part covered by the regular tile grid

    tiles, _ = _tiles(x, p, p, s)
    out_tiles = _run_tiles(net, tiles, chunk)
    y = _fold(out_tiles, b, (hv, wv), s)
    y[..., :p, :] = _strip(net, x[..., :p, :], p, s, True, chunk)
    y[..., :, :p] = _strip(net, x[..., :, :p], p, s, False, chunk)
    y[..., s:hv - s, s:wv - s] = _fold_mean(out_tiles[..., s:p - s, s:p - s].contiguous(), b,
                                            (hv - 2 * s, wv - 2 * s), s)
    # bottom and right borders: the last p rows / columns restored as strips, joined half-way into the overlap
    bottom = _strip(net, x[..., h - p:, :], p, s, True, chunk)
    right = _strip(net, x[..., :, w - p:], p, s, False, chunk)
    corner = net(x[..., h - p:, w - p:])
    keep_h, skip_h = hv - (p - h_cut) // 2, int((p - h_cut) / 2 + 0.5)
    keep_w, skip_w = wv - (p - w_cut) // 2, int((p - w_cut) / 2 + 0.5)
    y = torch.cat((y[..., :keep_h, :], bottom[..., skip_h:, :]), dim=2)
    right = torch.cat((right[..., :right.shape[2] - (p - h_cut) // 2, :], corner[..., skip_h:, :]), dim=2)
    y = torch.cat((y[..., :, :keep_w], right[..., :, skip_w:]), dim=3)
    return y[..., :h0, :w0]


register_preset("ctnet-gray", {"type": "CTNet", "n_colors": 1, "n_feats": 64, "patch_size": 48, "patch_dim": 3,
                               "num_heads": 12},
                "CTNet gray AWGN model (option.py defaults, n_colors 1; 51,407,489 parameters)")
register_preset("ctnet-color", {"type": "CTNet", "n_colors": 3, "n_feats": 64, "patch_size": 48, "patch_dim": 3,
                                "num_heads": 12},
                "CTNet colour AWGN model (option.py defaults, n_colors 3; 51,409,795 parameters)")
