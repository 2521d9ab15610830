"""Tiled inference with overlapping, smoothly blended tiles, for frames too large for one forward pass.

Each tile's output is weighted by a separable window that is zero in a `margin` band at the tile's inner edges
(where the tile border distorts the output), rises with a raised cosine over the rest of the overlap, and is one
elsewhere; the windows of two neighbours sum to one over their overlap, and the result is normalised by the summed
weights. Tiles start at multiples of the network's stride (`align`), so U-Nets see the same down-sampling grid as on
the whole image. Hence a model whose receptive-field radius is at most `margin` gives exactly the whole-image output.

Networks with global statistics are not local: NAFNet's channel attention pools over the whole map (global average,
or 384 px windows in the official test-time `NAFNetLocal` at level 0) and Restormer's transposed attention takes dot
products over all pixels. Tiled outputs of those models differ from whole-image ones (by how much is measured in
`tests/test_tiling.py`); the blending only removes visible seams. Use the `*Local` variants with a margin that covers
their windows for outputs closest to whole-image inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError


def model_stride(model: Callable[..., Tensor]) -> int:
    """The spatial multiple a network pads to (`padder_size` of NAFNet/Restormer, a restorer's `pad_multiple`)."""
    net = getattr(model, "net", model)
    call = getattr(model, "call", None)
    return max(int(getattr(net, "padder_size", 1)), int(getattr(call, "pad_multiple", 1)))


def tile_spans(size: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """`[start, end)` spans covering `size` pixels: starts are multiples of `align`, neighbours overlap >= `overlap`.

    All tiles are `tile` long except the last, which ends at `size` and may be up to `align - 1` longer.
    """
    if size <= tile:
        return [(0, size)]
    step = (tile - overlap) // align * align
    if step <= 0:
        raise RobustirError(f"tile {tile} minus overlap {overlap} must be at least the network stride {align}")
    last = (size - tile) // align * align
    starts = list(range(0, last, step)) + [last]
    return [(s, s + tile) for s in starts[:-1]] + [(last, size)]


def _ramp(length: int, margin: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """0 on the first `margin` pixels, a raised cosine, then 1 on the last `margin`; ramp(i) + ramp(L-1-i) = 1."""
    width = length - 2 * margin
    i = torch.arange(length, dtype=torch.float64)
    u = ((i - margin + 0.5) / width).clamp(0, 1)
    return (0.5 - 0.5 * torch.cos(math.pi * u)).to(dtype=dtype, device=device)


def blend_window(spans: list[tuple[int, int]], index: int, margin: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None) -> Tensor:
    """1-D weights of tile `index` of `spans`: complementary raised-cosine ramps over each overlap with a neighbour."""
    start, end = spans[index]
    w = torch.ones(end - start, dtype=dtype, device=device)
    if index > 0:
        length = spans[index - 1][1] - start
        w[:length] *= _ramp(length, margin, dtype, w.device)
    if index < len(spans) - 1:
        length = end - spans[index + 1][0]
        w[end - start - length:] *= 1 - _ramp(length, margin, dtype, w.device)
    return w


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 0 for v in pair):
        raise RobustirError(f"{name} must be a non-negative int or an (h, w) pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def tiled_forward(model: Callable[..., Tensor] | nn.Module, y: Tensor, tile: int | tuple[int, int] = 256,
                  overlap: int | tuple[int, int] = 64, *, margin: int | tuple[int, int] | None = None,
                  align: int | None = None, **cond: Any) -> Tensor:
    """Run `model(tile, **cond)` on overlapping tiles of `y` `(N, C, H, W)` and blend the outputs without seams.

    Args:
        model: any size-preserving callable, e.g. a `robustir.models.restorer(...)` or a NAFNet.
        y: input batch; every tile keeps the whole batch.
        tile: nominal tile size (h, w) or one int; the last tile of a row/column may be up to `align - 1` larger.
        overlap: minimum overlap of neighbouring tiles.
        margin: pixels at each inner tile edge given zero weight (default overlap // 4); the output equals whole-image
            inference when the model's receptive-field radius is at most `margin` (and the model is local).
        align: tile starts are multiples of this (default: the network stride, see `model_stride`).
        **cond: passed to every call, e.g. `sigma=` or `kernel=` of the uniform restorer.

    Returns:
        `(N, C_out, H, W)`; differentiable with respect to `y` (attacks can run through it).
    """
    if not isinstance(y, Tensor) or y.ndim != 4:
        raise RobustirError(f"tiled_forward: y must be an (N, C, H, W) tensor, got "
                            f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    tiles, overlaps = _pair(tile, "tile"), _pair(overlap, "overlap")
    margins = _pair(margin, "margin") if margin is not None else (overlaps[0] // 4, overlaps[1] // 4)
    stride = align if align is not None else model_stride(model)
    if stride < 1:
        raise RobustirError(f"align must be >= 1, got {stride}")
    for t, o, m, axis in zip(tiles, overlaps, margins, ("height", "width")):
        if o >= t:
            raise RobustirError(f"overlap {o} must be smaller than the tile {t} ({axis})")
        if 2 * m >= o and o > 0:
            raise RobustirError(f"margin {m} must be less than half the overlap {o} ({axis}), so that the blend "
                                f"weights stay positive")
    h, w = y.shape[-2:]
    rows, cols = tile_spans(h, tiles[0], overlaps[0], stride), tile_spans(w, tiles[1], overlaps[1], stride)
    if len(rows) == 1 and len(cols) == 1:
        return model(y, **cond)
    wr = [blend_window(rows, i, margins[0], dtype=y.dtype, device=y.device) for i in range(len(rows))]
    wc = [blend_window(cols, j, margins[1], dtype=y.dtype, device=y.device) for j in range(len(cols))]
    out: Tensor | None = None
    norm = torch.zeros(h, w, dtype=y.dtype, device=y.device)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            piece = model(y[..., r0:r1, c0:c1], **cond)
            if piece.shape[-2:] != (r1 - r0, c1 - c0) or piece.shape[0] != y.shape[0]:
                raise RobustirError(f"tiled_forward: the model changed the tile shape {tuple(y.shape[:1])}+"
                                    f"{(r1 - r0, c1 - c0)} into {tuple(piece.shape)}; tiling needs a size-preserving "
                                    f"model")
            if out is None:
                out = y.new_zeros(y.shape[0], piece.shape[1], h, w)
            weight = wr[i][:, None] * wc[j][None, :]
            out[..., r0:r1, c0:c1] += piece * weight
            norm[r0:r1, c0:c1] += weight
    assert out is not None
    return out / norm
