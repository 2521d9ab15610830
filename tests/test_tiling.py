"""Tiled inference: spans and windows, tiled == whole image for local models, no seams, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models import build, restorer
from robustir.models.tiling import blend_window, model_stride, tile_spans, tiled_forward

TINY = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}


def _randomise(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):  # zero at construction: blocks would be identities
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def _small_rf_model() -> nn.Module:
    """Three 3x3 convolutions: receptive-field radius 3, translation-equivariant, zero padding at the border."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(8, 3, 3, padding=1)).double()


@pytest.mark.parametrize(("size", "tile", "overlap", "align"), [(100, 32, 8, 1), (97, 40, 12, 8), (33, 16, 4, 4),
                                                                (20, 32, 8, 1), (64, 16, 0, 16)])
def test_spans_cover_aligned_and_overlapping(size: int, tile: int, overlap: int, align: int) -> None:
    spans = tile_spans(size, tile, overlap, align)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(s % align == 0 for s, _ in spans)
    lengths = [e - s for s, e in spans]
    if size <= tile:
        assert spans == [(0, size)]
    else:
        assert all(n == tile for n in lengths[:-1]) and tile <= lengths[-1] < tile + align
    assert all(a_end - b_start >= overlap for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_windows_form_a_partition_of_unity() -> None:
    spans = tile_spans(200, 48, 16, 1)
    total = torch.zeros(200, dtype=torch.float64)
    for i, (s, e) in enumerate(spans):
        w = blend_window(spans, i, 4, dtype=torch.float64)
        assert (w >= 0).all() and (w[:4] == 0).all() == (i > 0) and (w[-4:] == 0).all() == (i < len(spans) - 1)
        total[s:e] += w
    assert torch.allclose(total, torch.ones(200, dtype=torch.float64), atol=1e-12, rtol=0)


def test_small_receptive_field_model_tiled_equals_whole() -> None:
    net = _small_rf_model()
    x = torch.rand(2, 3, 45, 61, dtype=torch.float64)
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_forward(net, x, 16, 8, margin=3)
        too_small = tiled_forward(net, x, 16, 8, margin=1)  # margin below the receptive field: tile borders leak in
    assert torch.allclose(tiled, whole, atol=1e-12, rtol=0)
    assert (too_small - whole).abs().max().item() > 1e-4


def test_gradients_through_tiles_equal_whole_image_gradients() -> None:
    net = _small_rf_model()
    x = torch.rand(1, 3, 30, 34, dtype=torch.float64)
    grads = []
    for fn in (lambda a: net(a), lambda a: tiled_forward(net, a, (16, 14), (8, 7), margin=(3, 3))):
        xi = x.clone().requires_grad_()
        fn(xi).square().sum().backward()
        grads.append(xi.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12, rtol=0)


def test_nafnet_local_pool_tiled_equals_whole_but_global_pool_does_not() -> None:
    x = torch.rand(1, 3, 96, 128)
    local = _randomise(build({"type": "NAFNetLocal", **TINY, "train_size": [1, 3, 8, 8]}))
    glob = _randomise(build({"type": "NAFNet", **TINY}))
    glob.load_state_dict(local.state_dict())
    assert model_stride(local) == 4 and model_stride(restorer(local)) == 4
    with torch.no_grad():
        # windows of 12/6/3 px at the three levels: a 12 px margin covers the receptive field
        diff_local = (tiled_forward(restorer(local), x, 64, 32, margin=12) - local(x)).abs().max().item()
        # the global average differs per tile: documented, not a bug of the tiling
        diff_global = (tiled_forward(glob, x, 64, 32, margin=12) - glob(x)).abs().max().item()
    assert diff_local < 1e-5
    assert diff_global > 1e-4


def test_unaligned_tiles_break_the_unet_grid() -> None:
    net = _randomise(build({"type": "NAFNetLocal", **TINY, "train_size": [1, 3, 8, 8]}))
    x = torch.rand(1, 3, 64, 90)
    with torch.no_grad():
        aligned = tiled_forward(net, x, 48, 32, margin=12)
        shifted = tiled_forward(net, x, 48, 32, margin=12, align=1)  # starts that are not multiples of 4
    assert (aligned - net(x)).abs().max().item() < 1e-5
    assert tile_spans(90, 48, 32, 1) != tile_spans(90, 48, 32, 4)
    assert (shifted - net(x)).abs().max().item() > 1e-4


class _TileMean(nn.Module):
    """A deliberately non-local model: every output pixel is the mean of its tile (the worst case for seams)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)


def test_blending_leaves_no_seams() -> None:
    x = torch.linspace(0, 1, 160).repeat(1, 1, 40, 1)  # horizontal ramp: tile means jump by ~0.3 between tiles
    tiled = tiled_forward(_TileMean(), x, (40, 64), (0, 40), margin=(0, 4))
    means = [x[..., s:e].mean().item() for s, e in tile_spans(160, 64, 40, 1)]
    jump = max(abs(a - b) for a, b in zip(means, means[1:]))
    steps = tiled[0, 0, 0].diff().abs()
    assert jump > 0.1
    # raised-cosine ramp over 40 - 2*4 = 32 px: the steepest step is about jump * pi / 64, never the full jump
    assert steps.max().item() < jump * 3.2 / 64 + 1e-6
    assert torch.allclose(tiled[..., 0, :], tiled[..., -1, :])


def test_conditions_are_passed_to_every_tile() -> None:
    calls = []

    def model(t: Tensor, *, sigma: float) -> Tensor:
        calls.append(sigma)
        return t * sigma

    x = torch.rand(1, 1, 50, 50)
    out = tiled_forward(model, x, 24, 8, sigma=0.5)
    assert len(calls) == 9 and set(calls) == {0.5}
    assert torch.allclose(out, x * 0.5, atol=1e-6)


def test_clear_errors() -> None:
    net = _small_rf_model()
    x = torch.rand(1, 3, 40, 40, dtype=torch.float64)
    with pytest.raises(RobustirError, match="overlap 16 must be smaller than the tile 16"):
        tiled_forward(net, x, 16, 16)
    with pytest.raises(RobustirError, match="margin 4 must be less than half the overlap 8"):
        tiled_forward(net, x, 16, 8, margin=4)
    with pytest.raises(RobustirError, match="network stride"):
        tiled_forward(net, x, 16, 12, align=8)
    with pytest.raises(RobustirError, match=r"\(N, C, H, W\)"):
        tiled_forward(net, x[0], 16, 8)
    with pytest.raises(RobustirError, match="size-preserving"):
        tiled_forward(lambda t: t[..., :-1, :], x, 16, 8)
