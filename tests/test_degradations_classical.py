"""Classical restorers: Wiener and Richardson-Lucy, as functions and as registered models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from skimage.restoration import richardson_lucy as sk_richardson_lucy
from torch.autograd import gradcheck

from robustir.degradations import (RichardsonLucy, Wiener, add_gaussian_noise, blur, levin_kernels, motion_kernel,
                                   richardson_lucy, wiener_deconvolve)
from robustir.errors import RobustirError
from robustir.metrics import psnr
from robustir.models import build, get_model_info, restorer


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _camera(size: int = 128) -> torch.Tensor:
    return torch.from_numpy(skdata.camera()[100:100 + size, 150:150 + size].astype(np.float64) / 255)[None, None]


def _set12(root: Path, index: int) -> torch.Tensor:
    img = np.asarray(Image.open(root / "Set12" / f"{index:02d}.png"), dtype=np.float64) / 255
    return torch.from_numpy(img)[None, None]


def test_wiener_inverts_noiseless_circular_blur() -> None:
    x = _camera()
    k = motion_kernel(15, intensity=0.5, generator=_gen(0)).double()
    y = blur(x, k, "circular")
    blurred = float(psnr(y, x))
    restored = float(psnr(wiener_deconvolve(y, k, nsr=1e-8), x))
    assert blurred < 30 and restored > 60


def test_wiener_recovers_levin_blur_and_beats_noisy_input(data_root: Path) -> None:
    kernels = levin_kernels(data_root)
    x = _set12(data_root, 1)
    for i in (0, 3):
        k = kernels[i].double()
        assert float(psnr(wiener_deconvolve(blur(x, k), k, nsr=1e-7), x)) > 50
        y = add_gaussian_noise(blur(x, k), 2.55, generator=_gen(i))  # 1 % noise, METHODS.md 3.4 option
        base = float(psnr(y, x))
        restored = wiener_deconvolve(y, k)  # default nsr chosen for this noise level
        assert float(psnr(restored.clamp(0, 1), x)) > base + 3.0


def test_wiener_padding_reduces_ringing_on_non_periodic_blur() -> None:
    x = _camera(96)
    k = motion_kernel(13, intensity=0.3, generator=_gen(1)).double()
    y = blur(x, k, "replicate")  # a real camera does not wrap around
    plain = float(psnr(wiener_deconvolve(y, k, nsr=1e-3).clamp(0, 1), x))
    padded = float(psnr(wiener_deconvolve(y, k, nsr=1e-3, pad=True).clamp(0, 1), x))
    assert padded > plain + 1.0


def test_wiener_per_sample_kernels_and_nsr() -> None:
    x = torch.cat([_camera(64), _camera(64).flip(-1)])
    k = torch.stack([motion_kernel(9, intensity=0.4, generator=_gen(s)) for s in (2, 3)])[:, None].double()
    y = blur(x, k)
    nsr = torch.tensor([1e-3, 1e-2])
    both = wiener_deconvolve(y, k, nsr=nsr)
    for n in range(2):
        single = wiener_deconvolve(y[n:n + 1], k[n, 0], nsr=float(nsr[n]))
        torch.testing.assert_close(both[n:n + 1], single, rtol=0, atol=1e-12)


def test_wiener_is_differentiable() -> None:
    y = torch.rand(1, 2, 8, 9, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    k = torch.rand(3, 3, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b: wiener_deconvolve(a, b, nsr=1e-2), (y, k))


def test_richardson_lucy_improves_with_iterations() -> None:
    x = _camera(96).clamp(0.02, 1)  # RL assumes positive images
    k = motion_kernel(11, intensity=0.6, generator=_gen(6)).double()
    y = blur(x, k)
    scores = [float(psnr(richardson_lucy(y, k, iterations=n), x)) for n in (0, 5, 20, 60)]
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > scores[0] + 3.0


def test_richardson_lucy_matches_skimage_in_the_interior() -> None:
    """skimage's RL (zero-padded 'same' convolutions, start 0.5, no A^T 1 normaliser) equals ours with boundary
    'zeros' and init 0.5 except near the border, where only the normaliser differs; that difference travels at
    most one kernel radius per iteration."""
    x = _camera(64).clamp(0.05, 1)
    k = motion_kernel(7, intensity=0.5, generator=_gen(7)).double()
    k = k / k.sum()  # exactly 1 in float64, so A^T 1 = 1 away from the border as skimage assumes
    y = blur(x, k, "zeros")
    iters = 4
    ours = richardson_lucy(y, k, iterations=iters, boundary="zeros", init=0.5, eps=1e-12)[0, 0].numpy()
    theirs = sk_richardson_lucy(y[0, 0].numpy(), k.numpy(), num_iter=iters, clip=False, filter_epsilon=1e-12)
    m = (iters + 1) * 3 + 1
    np.testing.assert_allclose(ours[m:-m, m:-m], theirs[m:-m, m:-m], rtol=1e-9, atol=1e-12)


def test_richardson_lucy_valid_boundary_restores_full_size() -> None:
    x = _camera(48).clamp(0.05, 1)
    k = motion_kernel(7, intensity=0.2, generator=_gen(8)).double()
    y = blur(x, k, "valid")
    out = richardson_lucy(y, k, iterations=30, boundary="valid")
    assert out.shape == x.shape
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert float(psnr(out[inner], x[inner])) > float(psnr(blur(x, k, "reflect")[inner], x[inner]))


def test_registered_models_and_uniform_call() -> None:
    for name in ("Wiener", "RichardsonLucy"):
        info = get_model_info(name)
        assert info.task == "deblur" and info.call.needs_kernel
    x = _camera(64).float()
    k = motion_kernel(9, intensity=0.5, generator=_gen(9))
    y = blur(x, k)
    model = restorer({"type": "Wiener", "nsr": 1e-3})
    torch.testing.assert_close(model(y, kernel=k), wiener_deconvolve(y, k, nsr=1e-3))
    rl = restorer({"type": "RichardsonLucy", "iterations": 5})
    torch.testing.assert_close(rl(y, kernel=k[None, None]), richardson_lucy(y, k, iterations=5))
    assert isinstance(build({"type": "Wiener"}), Wiener)
    assert isinstance(build({"type": "RichardsonLucy"}), RichardsonLucy)
    with pytest.raises(RobustirError, match="non-blind deblurrer: pass kernel="):
        model(y)
    yr = y.clone().requires_grad_()
    model(yr, kernel=k).square().sum().backward()
    assert yr.grad is not None and bool(torch.isfinite(yr.grad).all()) and float(yr.grad.abs().sum()) > 0


@pytest.mark.parametrize("call, match", [
    (lambda: wiener_deconvolve(torch.rand(1, 1, 8, 8), torch.ones(3, 3), nsr=0.0), "nsr: expected a positive"),
    (lambda: wiener_deconvolve(torch.rand(2, 1, 8, 8), torch.ones(3, 3), nsr=torch.tensor([1.0, -1.0])), "nsr:"),
    (lambda: wiener_deconvolve(torch.rand(1, 8, 8), torch.ones(3, 3)), r"blurred image: expected a \(N, C, H, W\)"),
    (lambda: richardson_lucy(torch.rand(1, 1, 8, 8), -torch.ones(3, 3)), "non-negative kernel"),
    (lambda: richardson_lucy(torch.rand(1, 1, 8, 8), torch.ones(3, 3), iterations=-1), "iterations: expected"),
    (lambda: richardson_lucy(torch.rand(1, 1, 8, 8), torch.ones(3, 3), init=torch.ones(1, 1, 4, 4)), "init:"),
    (lambda: RichardsonLucy(boundary="valid"), "boundary: the RichardsonLucy model"),
    (lambda: Wiener(nsr=-1), "nsr: expected a positive"),
    (lambda: build({"type": "Wiener", "iterations": 3}), "unknown keyword 'iterations' for model type Wiener"),
])
def test_bad_inputs(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(RobustirError, match=match):
        call()
