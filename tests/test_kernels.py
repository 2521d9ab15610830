"""Kernel loading (Levin09 v7.3, kernels_12 v5, PNG, .npy), validation, resizing and random motion kernels."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.ndimage as ndi
import torch
from PIL import Image

from robustir.degradations import (LEVIN_SIZES, blur, gaussian_kernel, kernel_center, levin_kernels, load_kernels,
                                   motion_kernel, motion_kernels, resize_kernel, validate_kernel)
from robustir.errors import RobustirError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _asymmetric(kh: int = 5, kw: int = 4) -> np.ndarray:
    k = np.arange(1, kh * kw + 1, dtype=np.float64).reshape(kh, kw)
    return k / k.sum()


# --- shared-data kernels -------------------------------------------------------------------------------------------

def test_levin_kernels_sizes_and_sums(data_root: Path) -> None:
    kernels = levin_kernels(data_root)
    assert [tuple(k.shape) for k in kernels] == [(s, s) for s in LEVIN_SIZES]
    for k in kernels:
        assert k.dtype == torch.float32 and float(k.min()) >= 0
        assert abs(float(k.double().sum()) - 1.0) < 1e-6
    direct = load_kernels(data_root / "kernels" / "Levin09.mat")
    assert all(torch.equal(a, b) for a, b in zip(kernels, direct))


def test_levin_orientation_matches_kernels12(data_root: Path) -> None:
    """kernels_12.mat (MATLAB v5, read by scipy in MATLAB orientation) holds Levin kernels 7 and 8 zero-padded to
    25x25 at entries 10 and 9: the transpose applied to the HDF5 arrays must reproduce them exactly."""
    levin = load_kernels(data_root / "kernels" / "Levin09.mat")
    k12 = load_kernels(data_root / "kernels" / "kernels_12.mat")
    assert len(k12) == 12 and all(tuple(k.shape) == (25, 25) for k in k12)
    assert all(abs(float(k.double().sum()) - 1) < 1e-6 for k in k12)
    for levin_index, k12_index in [(6, 9), (7, 8)]:
        padded = torch.nn.functional.pad(levin[levin_index], (1, 1, 1, 1))
        torch.testing.assert_close(padded, k12[k12_index], rtol=0, atol=1e-7)
        assert not torch.allclose(torch.nn.functional.pad(levin[levin_index].T, (1, 1, 1, 1)), k12[k12_index],
                                  atol=1e-4)  # the kernels are not symmetric: orientation really is tested


def test_png_kernels_from_real_blur(data_root: Path) -> None:
    folder = data_root / "samples" / "real_blur" / "kernels"
    paths = sorted(folder.glob("*.png"))
    assert len(paths) == 4
    for path in paths:
        (k,) = load_kernels(path)
        raw = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        np.testing.assert_allclose(k.numpy(), raw / raw.sum(), rtol=0, atol=1e-7)


def test_levin_blur_on_real_image_matches_scipy(data_root: Path) -> None:
    img = np.asarray(Image.open(data_root / "Set12" / "01.png"), dtype=np.float64) / 255.0
    x = torch.from_numpy(img)[None, None]
    for k in levin_kernels(data_root)[:3]:
        k64 = k.double()
        ref = ndi.convolve(img, k64.numpy(), mode="wrap")
        for method in ("spatial", "fft"):
            np.testing.assert_allclose(blur(x, k64, "circular", method)[0, 0].numpy(), ref, rtol=0, atol=1e-12)


# --- file formats written by the tests -----------------------------------------------------------------------------

def test_matlab_v73_cell_array_roundtrip(tmp_path: Path) -> None:
    kernels = [_asymmetric(5, 4), _asymmetric(3, 7) * 3.0]
    path = tmp_path / "cells.mat"
    with h5py.File(path, "w") as f:  # the layout MATLAB writes for `save -v7.3` of a cell array
        refs = f.create_dataset("kernels", (len(kernels), 1), dtype=h5py.ref_dtype)
        group = f.create_group("#refs#")
        for i, k in enumerate(kernels):
            refs[i, 0] = group.create_dataset(f"k{i}", data=k.T).ref  # column-major: stored transposed
    got = load_kernels(path)
    assert [tuple(k.shape) for k in got] == [(5, 4), (3, 7)]
    for g, k in zip(got, kernels):
        np.testing.assert_allclose(g.numpy(), k / k.sum(), rtol=0, atol=1e-7)


def test_matlab_v5_cell_and_stack(tmp_path: Path) -> None:
    a, b = _asymmetric(5, 4), _asymmetric(5, 4)[::-1].copy()
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = a, b
    scipy.io.savemat(tmp_path / "cell.mat", {"kernels": cell})
    scipy.io.savemat(tmp_path / "stack.mat", {"psf": np.stack([a, b], axis=2)})
    for name in ("cell.mat", "stack.mat"):
        got = load_kernels(tmp_path / name)
        assert len(got) == 2
        np.testing.assert_allclose(got[0].numpy(), a, rtol=0, atol=1e-7)
        np.testing.assert_allclose(got[1].numpy(), b, rtol=0, atol=1e-7)


def test_npy_and_16bit_png(tmp_path: Path) -> None:
    k = _asymmetric(6, 5)
    np.save(tmp_path / "one.npy", k * 7)
    np.save(tmp_path / "many.npy", np.stack([k, k[::-1]]))
    (one,) = load_kernels(tmp_path / "one.npy")
    np.testing.assert_allclose(one.numpy(), k, rtol=0, atol=1e-7)
    assert len(load_kernels(tmp_path / "many.npy")) == 2
    img16 = np.round(k / k.max() * 65535).astype(np.uint16)
    Image.fromarray(img16).save(tmp_path / "k16.png")
    (from_png,) = load_kernels(tmp_path / "k16.png")
    np.testing.assert_allclose(from_png.numpy(), img16 / img16.sum(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("content, suffix, match", [
    (b"not a matlab file at all", ".mat", "could not be read"),
    (b"\x89PNG\r\n\x1a\n truncated", ".png", "could not be read"),
    (b"\x93NUMPY garbage", ".npy", "could not be read"),
    (b"1 2 3", ".txt", "unsupported type"),
])
def test_unreadable_kernel_files(tmp_path: Path, content: bytes, suffix: str, match: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(RobustirError, match=match):
        load_kernels(path)


def test_missing_and_invalid_kernel_files(tmp_path: Path) -> None:
    with pytest.raises(RobustirError, match="does not exist"):
        load_kernels(tmp_path / "nope.mat")
    np.save(tmp_path / "neg.npy", np.array([[0.5, -0.1], [0.3, 0.3]]))
    with pytest.raises(RobustirError, match=r"neg.npy: kernel must be non-negative"):
        load_kernels(tmp_path / "neg.npy")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(RobustirError, match="black.png: kernel sums to zero"):
        load_kernels(tmp_path / "black.png")


# --- validation and resizing ---------------------------------------------------------------------------------------

def test_validate_kernel() -> None:
    k = validate_kernel(torch.tensor([[1.0, 3.0], [0.0, 4.0]]), "mine")
    torch.testing.assert_close(k, torch.tensor([[0.125, 0.375], [0.0, 0.5]]))
    assert validate_kernel(np.ones((3, 3), dtype=np.uint8)).dtype == torch.float32
    assert validate_kernel(torch.ones(2, 2, dtype=torch.float64)).dtype == torch.float64
    for bad, match in [(torch.ones(3), "mine: expected a 2-D"), (torch.tensor([[1.0, -1e-3]]), "mine: kernel must be"),
                       (torch.zeros(3, 3), "mine: kernel sums to zero"),
                       (torch.tensor([[1.0, float("nan")]]), "mine: kernel contains NaN"),
                       ([[1.0]], "mine: expected a 2-D tensor or array")]:
        with pytest.raises(RobustirError, match=match):
            validate_kernel(bad, "mine")


def test_validate_kernel_keeps_gradient() -> None:
    raw = torch.rand(4, 4, generator=_gen(0), dtype=torch.float64, requires_grad=True)
    validate_kernel(raw)[0, 0].backward()
    assert raw.grad is not None and float(raw.grad.abs().sum()) > 0


def _second_moment(k: torch.Tensor) -> float:
    """Mean squared distance of the kernel mass from its centroid (the blur extent, in pixels^2)."""
    k = k.double()
    rows, cols = torch.meshgrid(torch.arange(k.shape[0]).double(), torch.arange(k.shape[1]).double(), indexing="ij")
    mr, mc = float((k * rows).sum()), float((k * cols).sum())
    return float((k * ((rows - mr) ** 2 + (cols - mc) ** 2)).sum())


@pytest.mark.parametrize("size", [25, 17, 11])
def test_resize_kernel_scales_extent(size: int) -> None:
    base = motion_kernel(23, intensity=0.5, generator=_gen(3))
    out = resize_kernel(base, size)
    assert tuple(out.shape) == (size, size)
    assert float(out.min()) >= 0 and abs(float(out.double().sum()) - 1) < 1e-6
    ratio = (_second_moment(out) / _second_moment(base)) ** 0.5
    assert abs(ratio - size / 23) < 0.12 * size / 23  # the blur extent scales with the kernel size
    torch.testing.assert_close(resize_kernel(base, 23), base)
    assert tuple(resize_kernel(base, (9, 13)).shape) == (9, 13)
    with pytest.raises(RobustirError, match="size: expected a positive int"):
        resize_kernel(base, 0)


# --- random motion kernels -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [31, 24, 9])
def test_motion_kernel_properties(size: int) -> None:
    for seed in range(4):
        k = motion_kernel(size, intensity=0.7, generator=_gen(seed))
        assert tuple(k.shape) == (size, size) and k.dtype == torch.float32
        assert float(k.min()) >= 0 and abs(float(k.double().sum()) - 1) < 1e-6
        rows = torch.arange(size).double()
        centre = kernel_center(size, size)
        torch.testing.assert_close(float((k.double().sum(1) * rows).sum()), float(centre[0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(float((k.double().sum(0) * rows).sum()), float(centre[1]), atol=1e-4, rtol=0)
        assert int((k > 0).sum()) >= size // 2 + 2  # a path, not a dot


def test_motion_kernel_determinism_and_intensity() -> None:
    a = motion_kernel(21, intensity=0.5, generator=_gen(7))
    assert torch.equal(a, motion_kernel(21, intensity=0.5, generator=_gen(7)))
    assert not torch.equal(a, motion_kernel(21, intensity=0.5, generator=_gen(8)))
    state = torch.get_rng_state()
    motion_kernel(15, intensity=0.3, generator=_gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    # intensity 0: straight linear motion -> the mass lies on a line (second-moment matrix has rank ~1)
    for seed in range(3):
        k = motion_kernel(21, intensity=0.0, generator=_gen(seed)).double()
        rows, cols = torch.meshgrid(torch.arange(21).double(), torch.arange(21).double(), indexing="ij")
        pts = torch.stack([rows.flatten(), cols.flatten()], 1)
        w = k.flatten()
        mean = (w[:, None] * pts).sum(0)
        cov = ((pts - mean).T * w) @ (pts - mean)
        eig = torch.linalg.eigvalsh(cov)
        assert float(eig[0]) < 0.02 * float(eig[1])
    batch = motion_kernels(3, 13, intensity=(0.2, 0.8), generator=_gen(2))
    assert tuple(batch.shape) == (3, 1, 13, 13)
    torch.testing.assert_close(batch.double().sum(dim=(-2, -1)), torch.ones(3, 1, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 0}, "size: expected a positive int"),
    ({"size": 9, "intensity": 1.5}, "intensity: expected a number in"),
    ({"size": 9, "steps": 1}, "steps: expected an int"),
    ({"size": 9, "length": -3.0}, "length: expected a positive"),
    ({"size": 9, "generator": 3}, "generator: expected a torch.Generator"),
])
def test_motion_kernel_bad_inputs(kwargs: dict, match: str) -> None:
    with pytest.raises(RobustirError, match=match):
        motion_kernel(**kwargs)


@pytest.mark.parametrize("std", [0.25, 0.75, 1.0, 1.5, 2.3, 5.0])
def test_gaussian_kernel_is_scipy_gaussian_filter_impulse_response(std: float) -> None:
    k = gaussian_kernel(std)
    n = k.shape[0]
    assert n % 2 == 1 and k.dtype == torch.float32 and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    impulse = np.zeros((n, n))
    impulse[n // 2, n // 2] = 1.0
    ref = ndi.gaussian_filter(impulse, std, truncate=3.0, mode="constant")
    np.testing.assert_allclose(k.double().numpy(), ref, atol=1e-7)
    assert torch.equal(k, k.flip(0).T)  # isotropic: symmetric under flips and transposition
    big = gaussian_kernel(std, size=n + 4)
    np.testing.assert_allclose(big[2:-2, 2:-2].numpy() / float(big[2:-2, 2:-2].sum()), k.numpy(), atol=1e-7)


def test_gaussian_kernel_bad_arguments() -> None:
    for std in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(RobustirError, match="std: expected a positive finite"):
            gaussian_kernel(std)  # type: ignore[arg-type]
    for size in (0, 4, -3, 2.0):
        with pytest.raises(RobustirError, match="size: expected a positive odd integer"):
            gaussian_kernel(1.0, size=size)  # type: ignore[arg-type]
