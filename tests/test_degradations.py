"""Blur and noise operators: scipy parity, spatial == FFT, exact adjoints, gradchecks, modules == functions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal as sps
import torch
from torch.autograd import gradcheck

from robustir.degradations import (BOUNDARIES, Blur, Compose, GaussianNoise, add_gaussian_noise, blur, blur_adjoint,
                                   kernel_center)
from robustir.errors import RobustirError

SCIPY_MODE = {"circular": "wrap", "reflect": "mirror", "replicate": "nearest", "zeros": "constant"}
KERNEL_SIZES = [(5, 5), (4, 6), (7, 4), (2, 2), (1, 3)]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=_gen(seed), dtype=torch.float64)


def _scipy_blur(x: torch.Tensor, k: torch.Tensor, mode: str) -> np.ndarray:
    """Per-channel scipy.ndimage.convolve of a (N, C, H, W) batch with one (kh, kw) kernel."""
    return np.stack([[ndi.convolve(im.numpy(), k.numpy(), mode=mode) for im in sample] for sample in x])


@pytest.mark.parametrize("ksize", KERNEL_SIZES)
@pytest.mark.parametrize("boundary", list(SCIPY_MODE))
@pytest.mark.parametrize("method", ["spatial", "fft"])
def test_blur_matches_scipy_ndimage(ksize: tuple[int, int], boundary: str, method: str) -> None:
    x, k = _rand(2, 3, 13, 18, seed=1), _rand(*ksize, seed=2)
    got = blur(x, k, boundary, method).numpy()
    np.testing.assert_allclose(got, _scipy_blur(x, k, SCIPY_MODE[boundary]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("ksize", KERNEL_SIZES)
@pytest.mark.parametrize("method", ["spatial", "fft"])
def test_valid_and_zeros_match_fftconvolve(ksize: tuple[int, int], method: str) -> None:
    x, k = _rand(1, 2, 15, 11, seed=3), _rand(*ksize, seed=4)
    kh, kw = ksize
    cy, cx = kernel_center(kh, kw)
    valid = np.stack([sps.fftconvolve(c.numpy(), k.numpy(), mode="valid") for c in x[0]])
    full = np.stack([sps.fftconvolve(c.numpy(), k.numpy(), mode="full") for c in x[0]])
    out_valid = blur(x, k, "valid", method)[0].numpy()
    assert out_valid.shape == (2, 15 - kh + 1, 11 - kw + 1)
    np.testing.assert_allclose(out_valid, valid, rtol=0, atol=1e-12)
    np.testing.assert_allclose(blur(x, k, "zeros", method)[0].numpy(), full[:, cy:cy + 15, cx:cx + 11],
                               rtol=0, atol=1e-12)
    if kh % 2 and kw % 2:  # fftconvolve's 'same' centres at (k - 1) // 2, which equals ours only for odd sizes
        same = np.stack([sps.fftconvolve(c.numpy(), k.numpy(), mode="same") for c in x[0]])
        np.testing.assert_allclose(blur(x, k, "zeros", method)[0].numpy(), same, rtol=0, atol=1e-12)


def test_even_kernel_centre_is_lower_right_middle() -> None:
    x = _rand(1, 1, 6, 7)
    for kh, kw in [(2, 2), (4, 4), (2, 3)]:
        delta = torch.zeros(kh, kw, dtype=torch.float64)
        delta[kernel_center(kh, kw)] = 1.0
        for boundary in ("circular", "reflect", "replicate", "zeros"):
            for method in ("spatial", "fft"):
                torch.testing.assert_close(blur(x, delta, boundary, method), x, rtol=0, atol=1e-12)
    # all mass one pixel up-left of the centre: y[i, j] = x[i + 1, j + 1], the image moves up-left
    shift = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(blur(x, shift, "circular"), torch.roll(x, shifts=(-1, -1), dims=(-2, -1)))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("ksize", [(5, 5), (4, 6), (9, 8)])
def test_spatial_equals_fft_per_sample_kernels(boundary: str, ksize: tuple[int, int]) -> None:
    x = _rand(3, 3, 21, 17, seed=5)
    k = _rand(3, 1, *ksize, seed=6)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    a, b = blur(x, k, boundary, "spatial"), blur(x, k, boundary, "fft")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for n in range(3):  # a batch with per-sample kernels equals N single blurs
        torch.testing.assert_close(a[n:n + 1], blur(x[n:n + 1], k[n, 0], boundary, "spatial"), rtol=0, atol=1e-12)


def test_kernel_larger_than_image_circular_and_padded() -> None:
    x, k = _rand(1, 1, 5, 6, seed=7), _rand(9, 11, seed=8)
    for boundary, mode in [("circular", "wrap"), ("reflect", "mirror"), ("replicate", "nearest"),
                           ("zeros", "constant")]:
        ref = _scipy_blur(x, k, mode)
        for method in ("spatial", "fft"):
            np.testing.assert_allclose(blur(x, k, boundary, method).numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", ["spatial", "fft"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_adjointness(boundary: str, method: str, per_sample: bool) -> None:
    x = _rand(2, 3, 19, 16, seed=9)
    k = _rand(2, 1, 6, 5, seed=10) if per_sample else _rand(6, 5, seed=10)
    y = blur(x, k, boundary, method)
    r = _rand(*y.shape, seed=11)
    at_r = blur_adjoint(r, k, boundary, method)
    assert at_r.shape == x.shape
    lhs, rhs = float((y * r).sum()), float((x * at_r).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", ["spatial", "fft"])
def test_adjoint_spatial_equals_fft(boundary: str, method: str) -> None:
    r, k = _rand(2, 1, 12, 13, seed=12), _rand(3, 4, seed=13)
    torch.testing.assert_close(blur_adjoint(r, k, boundary, "spatial"), blur_adjoint(r, k, boundary, "fft"),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", ["spatial", "fft"])
def test_gradcheck_image_and_kernel(boundary: str, method: str) -> None:
    x = _rand(2, 2, 7, 6, seed=14).requires_grad_()
    k = _rand(2, 1, 3, 2, seed=15).requires_grad_()
    assert gradcheck(lambda a, b: blur(a, b, boundary, method), (x, k))
    y = _rand(*blur(x, k, boundary, method).shape, seed=16).requires_grad_()
    assert gradcheck(lambda a, b: blur_adjoint(a, b, boundary, method), (y, k))


def test_kernel_gradient_reaches_shared_kernel() -> None:
    x = _rand(2, 3, 10, 10, seed=17)
    k = _rand(5, 5, seed=18).requires_grad_()
    blur(x, k, "reflect", "fft").square().sum().backward()
    assert k.grad is not None and k.grad.shape == (5, 5) and bool(k.grad.abs().sum() > 0)


def test_module_equals_function_and_compose() -> None:
    x = _rand(2, 3, 16, 15, seed=19)
    k = _rand(7, 7, seed=20)
    k = k / k.sum()
    op = Blur(k, boundary="replicate")
    torch.testing.assert_close(op(x), blur(x, k, "replicate"))
    torch.testing.assert_close(op.A_adjoint(x), blur_adjoint(x, k, "replicate"))
    chain = Compose(op, GaussianNoise(25.0, generator=_gen(3)))
    expected = add_gaussian_noise(blur(x, k, "replicate"), 25.0, generator=_gen(3))
    torch.testing.assert_close(chain(x), expected)
    torch.testing.assert_close(chain.A(x), op.A(x))
    torch.testing.assert_close(chain.A_adjoint(x), op.A_adjoint(x))
    assert "replicate" in repr(op)


def test_noise_is_seeded_and_leaves_global_rng_alone() -> None:
    x = torch.full((2, 1, 64, 64), 0.5)
    state = torch.get_rng_state()
    a = add_gaussian_noise(x, 25, generator=_gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, add_gaussian_noise(x, 25, generator=_gen(1)))
    assert not torch.equal(a, add_gaussian_noise(x, 25, generator=_gen(2)))
    assert not torch.equal(add_gaussian_noise(x, 25), add_gaussian_noise(x, 25))  # None: a fresh seed each call
    assert torch.equal(torch.get_rng_state(), state)


def test_noise_statistics_per_image_sigma_and_clip() -> None:
    x = torch.full((3, 3, 128, 128), 0.5, dtype=torch.float64)
    sigma = torch.tensor([5.0, 25.0, 50.0])
    y = add_gaussian_noise(x, sigma, generator=_gen(4))
    std = (y - x).flatten(1).std(dim=1)
    mean = (y - x).flatten(1).mean(dim=1)
    n = x[0].numel()
    # sample std of n normals has relative standard error 1/sqrt(2n) ~ 0.003: 5 standard errors tolerance
    torch.testing.assert_close(std, sigma.double() / 255, rtol=5 / (2 * n) ** 0.5, atol=0)
    assert bool((mean.abs() < 5 * sigma.double() / 255 / n ** 0.5).all())
    assert float(y.max()) > 1.0 and float(y.min()) < 0.0  # not clipped by default (DnCNN convention)
    yc = add_gaussian_noise(x, sigma, generator=_gen(4), clip=True)
    torch.testing.assert_close(yc, y.clamp(0, 1))
    assert torch.equal(add_gaussian_noise(x, 0.0, generator=_gen(4)), x)


def test_noise_gradient_and_dtype() -> None:
    x = _rand(1, 1, 8, 8).requires_grad_()
    sigma = torch.tensor([10.0], dtype=torch.float64, requires_grad=True)
    y = add_gaussian_noise(x, sigma, generator=_gen(5))
    assert y.dtype == torch.float64
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    noise = (y - x).detach()
    torch.testing.assert_close(sigma.grad, (noise.sum() / 10.0).reshape(1))


@pytest.mark.parametrize("call, match", [
    (lambda: blur(torch.rand(3, 8, 8), torch.ones(3, 3)), r"image: expected a \(N, C, H, W\)"),
    (lambda: blur(torch.rand(1, 1, 8, 8), torch.ones(3, 3), "wrap"), "boundary: expected one of"),
    (lambda: blur(torch.rand(1, 1, 8, 8), torch.ones(3, 3), method="dft"), "method: expected one of"),
    (lambda: blur(torch.rand(2, 1, 8, 8), torch.ones(3, 1, 3, 3)), r"kernel: expected shape"),
    (lambda: blur(torch.rand(1, 1, 8, 8), torch.ones(1, 2, 3, 3)), r"kernel: expected shape"),
    (lambda: blur(torch.rand(1, 1, 8, 8), torch.full((3, 3), float("nan"))), "kernel: contains NaN"),
    (lambda: blur(torch.full((1, 1, 8, 8), float("inf")), torch.ones(3, 3)), "image: contains NaN"),
    (lambda: blur(torch.rand(1, 1, 8, 8), torch.ones(3, 3, dtype=torch.int64)), "kernel: expected a floating"),
    (lambda: blur(torch.rand(1, 1, 4, 8), torch.ones(5, 3), "valid"), "does not fit"),
    (lambda: blur(torch.rand(1, 1, 8, 8), [[1.0]]), "kernel: expected a torch.Tensor"),
    (lambda: add_gaussian_noise(torch.rand(1, 1, 4, 4), -1.0), "sigma: expected a finite non-negative"),
    (lambda: add_gaussian_noise(torch.rand(2, 1, 4, 4), torch.tensor([1.0, 2.0, 3.0])), "sigma: expected one"),
    (lambda: add_gaussian_noise(torch.rand(1, 1, 4, 4), "25"), "sigma: expected a number"),
    (lambda: add_gaussian_noise(torch.rand(1, 1, 4, 4), 25, generator=0), "generator: expected a torch.Generator"),
    (lambda: Blur(torch.ones(3)), "kernel: expected a"),
    (lambda: GaussianNoise(float("nan")), "sigma: expected a finite"),
    (lambda: Compose(), "Compose: expected at least one"),
])
def test_bad_inputs(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(RobustirError, match=match):
        call()
