"""DnCNN / FDnCNN / FFDNet / DRUNet / DPIR behaviour, cross-checked against independent formulations, and the
official DnCNN checkpoints scored on Set12 / BSD68 with seeded noise (KAIR's protocol)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustir.models import build, load_weights, restorer
from robustir.models.drunet import UNetRes
from robustir.models.dpir import dihedral, dihedral_inverse, hqs_data_step, hqs_schedule



def _randomise(net: torch.nn.Module, gain: float = 1.0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                fan_in = t[0].numel() if t.ndim > 1 else 1
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * gain / math.sqrt(fan_in) * (1 if t.ndim > 1 else 0.1))
    return net.eval()


def test_dncnn_is_residual_and_bn_uses_kair_eps() -> None:
    net = _randomise(build({"type": "DnCNN", "nc": 8, "nb": 4, "act_mode": "BR"}))
    bn = net.model[3]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-4 and bn.momentum == 0.9
    y = torch.rand(2, 1, 13, 17)
    with torch.no_grad():
        assert torch.allclose(net(y), y - net.model(y))
        net.model[-1].weight.zero_()
        net.model[-1].bias.zero_()
        assert torch.equal(net(y), y)


def test_fdncnn_restorer_appends_noise_map() -> None:
    net = _randomise(build({"type": "FDnCNN", "in_nc": 4, "out_nc": 3, "nc": 8, "nb": 4}))
    y = torch.rand(2, 3, 11, 14)
    sigma = torch.tensor([15 / 255, 50 / 255])
    with torch.no_grad():
        ref = net(torch.cat([y, sigma.view(2, 1, 1, 1).expand(2, 1, 11, 14)], 1))
        assert torch.equal(restorer(net)(y, sigma=sigma), ref)


def _kair_unshuffle(x: torch.Tensor) -> torch.Tensor:
    """KAIR's PixelUnShuffle written with view/permute (independent of F.pixel_unshuffle)."""
    n, c, h, w = x.shape
    v = x.contiguous().view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return v.contiguous().view(n, c * 4, h // 2, w // 2)


def test_ffdnet_matches_independent_formulation_on_odd_sizes() -> None:
    net = _randomise(build({"type": "FFDNet", "in_nc": 3, "out_nc": 3, "nc": 8, "nb": 4}))
    y = torch.rand(2, 3, 13, 18)
    sigma = torch.tensor([10 / 255, 40 / 255]).view(2, 1, 1, 1)
    with torch.no_grad():
        xp = torch.cat([y, y[:, :, -1:]], dim=2)  # replicate one row: 14 x 18
        z = torch.cat([_kair_unshuffle(xp), sigma.expand(2, 1, 7, 9)], 1)
        ref = F.pixel_shuffle(net.model(z), 2)[..., :13, :18]
        assert torch.allclose(net(y, sigma), ref, atol=1e-6)
        assert torch.equal(restorer(net)(y, sigma=sigma.view(2)), net(y, sigma))


def test_drunet_restorer_replicate_pads_to_8_and_crops() -> None:
    net = _randomise(build({"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 8, 8, 16], "nb": 1, "bias": True}),
                     gain=0.8)
    y = torch.rand(1, 1, 19, 26)
    s = torch.tensor([25 / 255])
    with torch.no_grad():
        yp = F.pad(y, (0, 6, 0, 5), mode="replicate")
        ref = net(torch.cat([yp, torch.full_like(yp, 25 / 255)], 1))[..., :19, :26]
        assert torch.allclose(restorer(net)(y, sigma=s), ref, atol=1e-6)


@pytest.mark.parametrize("down,up", [("avgpool", "pixelshuffle"), ("maxpool", "upconv")])
def test_drunet_other_sampling_modes_build_and_run(down: str, up: str) -> None:
    net = build({"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 8, 8, 16], "nb": 1,
                 "downsample_mode": down, "upsample_mode": up})
    y = torch.rand(1, 1, 32, 32)
    if down == "maxpool":  # KAIR's maxpool block convolves without padding, so only the avgpool variant keeps sizes
        with pytest.raises(Exception):
            restorer(net)(y, sigma=0.1)
    else:
        assert restorer(net)(y, sigma=0.1).shape == y.shape


def test_hqs_schedule_equals_dpir_numpy_schedule() -> None:
    for sn in (7.65, 2.55, 0.0):
        ours_s, ours_a = hqs_schedule(torch.tensor([sn / 255], dtype=torch.float64), iter_num=8)
        floor = max(0.255 / 255, sn / 255)
        ref_s = np.logspace(np.log10(49.0), np.log10(floor * 255), 8).astype(np.float32) / 255.0
        ref_a = 0.23 * floor ** 2 / ref_s.astype(np.float64) ** 2
        assert np.allclose(ours_s.numpy()[0], ref_s, rtol=1e-6)
        assert np.allclose(ours_a.numpy()[0], ref_a, rtol=1e-5)


def test_hqs_data_step_solves_the_normal_equations() -> None:
    from robustir.degradations.functional import blur, blur_adjoint, psf2otf

    torch.manual_seed(3)
    x_true = torch.rand(2, 1, 20, 23, dtype=torch.float64)
    k = torch.rand(1, 1, 7, 5, dtype=torch.float64)
    k = k / k.sum()
    y = blur(x_true, k, boundary="circular") + 0.01 * torch.randn_like(x_true)
    z = torch.rand_like(x_true)
    alpha = torch.tensor([0.05, 0.3], dtype=torch.float64)
    x = hqs_data_step(z, torch.fft.rfft2(y), psf2otf(k, (20, 23)), alpha)
    # gradient of 1/2||k*x - y||^2 + alpha/2 ||x - z||^2 vanishes at the minimiser
    grad = blur_adjoint(blur(x, k, boundary="circular") - y, k, boundary="circular") + alpha.view(2, 1, 1, 1) * (x - z)
    assert grad.abs().max().item() < 1e-10


def test_dihedral_inverse_and_kair_modes() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    seen = set()
    for m in range(8):
        t = dihedral(x, m)
        assert torch.equal(dihedral_inverse(t, m), x)
        seen.add(tuple(t.flatten().tolist()))
    assert len(seen) == 8
    assert torch.equal(dihedral(x, 5), torch.from_numpy(np.rot90(x.numpy(), 1, (2, 3)).copy()))
    assert torch.equal(dihedral(x, 1), torch.from_numpy(np.flip(np.rot90(x.numpy(), 1, (2, 3)), 2).copy()))


def test_dpir_without_kernel_is_one_drunet_pass() -> None:
    spec = {"in_nc": 2, "out_nc": 1, "nc": [4, 8, 8, 16], "nb": 1}
    dpir = _randomise(build({"type": "DPIR", **spec, "iter_num": 3}), gain=0.8)
    unet = build({"type": "UNetRes", **spec, "bias": False})
    load_weights(unet, dpir.state_dict())  # same parameter names: released DRUNet weights load into DPIR
    y = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        assert torch.allclose(restorer(dpir)(y, sigma=0.1), restorer(unet)(y, sigma=0.1), atol=1e-6)


def test_dpir_hqs_loop_matches_explicit_iteration() -> None:
    spec = {"type": "DPIR", "in_nc": 2, "out_nc": 1, "nc": [4, 8, 8, 16], "nb": 1, "iter_num": 4, "x8": True}
    net = _randomise(build(spec), gain=0.8)
    y = torch.rand(1, 1, 24, 21)
    k = torch.zeros(5, 5)
    k[2, 1:4] = 1 / 3
    sigma = torch.tensor([7.65 / 255])
    from robustir.degradations.functional import psf2otf

    with torch.no_grad():
        out = restorer(net)(y, sigma=sigma, kernel=k)
        sig, alp = hqs_schedule(sigma, iter_num=4)
        x = y
        for i in range(4):
            x = hqs_data_step(x, torch.fft.rfft2(y), psf2otf(k[None, None], (24, 21)), alp[:, i])
            t = dihedral(x, i)
            h, w = t.shape[-2:]
            tp = F.pad(t, (0, (-w) % 16, 0, (-h) % 16), mode="replicate")
            # the plain DRUNet forward on the padded input with its sigma map
            e = UNetRes.forward(net, torch.cat([tp, torch.full_like(tp, float(sig[0, i]))], 1))[..., :h, :w]
            x = dihedral_inverse(e, i)
    assert torch.allclose(out, x, atol=1e-6)
