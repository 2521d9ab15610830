"""Blur kernels: loading (.mat v7.3 / v5, images, .npy), validation, resizing, the Levin et al. (2009) set.

Every kernel robustir returns is a 2-D float32 `(kh, kw)` tensor, non-negative and summing to 1, oriented as MATLAB
shows it (row = y). Its centre is `(kh // 2, kw // 2)` (see `robustir.degradations.functional`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.errors import RobustirError

LEVIN_SIZES = (19, 17, 15, 27, 13, 21, 23, 23)
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
KERNEL_SUFFIXES = (".mat", ".npy", *IMAGE_SUFFIXES)


def validate_kernel(kernel: Tensor | np.ndarray, name: str = "kernel") -> Tensor:
    """Check a 2-D finite non-negative kernel with positive sum and return it normalised to sum 1.

    Args:
        kernel: `(kh, kw)` tensor or array (integer arrays, e.g. 8-bit kernel images, are converted to float32).
        name: how error messages refer to the kernel (e.g. the file it came from).

    Returns:
        The kernel divided by its sum, a floating-point tensor (float32 unless it was float64); differentiable.
    """
    if isinstance(kernel, np.ndarray):
        kernel = torch.from_numpy(np.ascontiguousarray(kernel))
    if not isinstance(kernel, Tensor):
        raise RobustirError(f"{name}: expected a 2-D tensor or array, got {type(kernel).__name__}")
    if kernel.ndim != 2:
        raise RobustirError(f"{name}: expected a 2-D (kh, kw) kernel, got shape {tuple(kernel.shape)}")
    if kernel.numel() == 0:
        raise RobustirError(f"{name}: kernel is empty, shape {tuple(kernel.shape)}")
    if not kernel.is_floating_point():
        kernel = kernel.to(torch.float32)
    if not bool(torch.isfinite(kernel).all()):
        raise RobustirError(f"{name}: kernel contains NaN or inf values")
    low = float(kernel.detach().min())
    if low < 0:
        raise RobustirError(f"{name}: kernel must be non-negative, found a value of {low:.4g}")
    total = kernel.sum()
    if float(total.detach()) <= 0:
        raise RobustirError(f"{name}: kernel sums to zero; expected a positive sum (it is normalised to 1)")
    return kernel / total


def resize_kernel(kernel: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resample a kernel to `size` (bicubic, antialiased when shrinking), clip negatives to 0, renormalise to sum 1.

    The blur extent scales with the size (METHODS.md 3.6: kernel-size study at 25, 17 and 11 from Levin kernels).
    """
    k = validate_kernel(kernel, "kernel")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in hw):
        raise RobustirError(f"size: expected a positive int or (height, width), got {size!r}")
    if tuple(k.shape) == hw:
        return k
    shrink = hw[0] < k.shape[0] or hw[1] < k.shape[1]
    out = F.interpolate(k[None, None], size=hw, mode="bicubic", align_corners=False, antialias=shrink)[0, 0]
    out = out.clamp(min=0)
    if float(out.sum()) <= 0:
        raise RobustirError(f"size: resizing a {tuple(k.shape)} kernel to {hw} left no positive values")
    return out / out.sum()


def gaussian_kernel(std: float, size: int | None = None) -> Tensor:
    """An isotropic Gaussian blur kernel of standard deviation `std` px, `size`² (odd), summing to 1.

    Sampled at the pixel centres and renormalised. The default size, 2·round(3·std)+1, is the support of
    `scipy.ndimage.gaussian_filter(..., truncate=3)`, whose impulse response this then equals.
    """
    import math

    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise RobustirError(f"std: expected a positive finite standard deviation in pixels, got {std!r}")
    if size is None:
        size = 2 * int(3 * std + 0.5) + 1
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise RobustirError(f"size: expected a positive odd integer, got {size!r}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (r / std) ** 2)
    k = torch.outer(g, g)
    return (k / k.sum()).to(torch.float32)


def _from_hdf5(path: Path) -> list[np.ndarray]:
    """Kernels from a MATLAB v7.3 (HDF5) file: a cell array of object references or one numeric array."""
    import h5py

    with h5py.File(path, "r") as f:
        keys = [k for k in f.keys() if not k.startswith("#")]
        key = "kernels" if "kernels" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise RobustirError(f"{path}: expected a variable named 'kernels' (or a single variable), found {keys}")
        ds = f[key]
        if ds.dtype == object:  # a MATLAB cell array: each entry is a reference to one kernel
            arrays = [np.asarray(f[ref], dtype=np.float64) for ref in np.asarray(ds).reshape(-1)]
        else:
            data = np.asarray(ds, dtype=np.float64)
            arrays = [data] if data.ndim == 2 else list(data) if data.ndim == 3 else [data]
    # HDF5 stores MATLAB's column-major arrays transposed
    return [a.T for a in arrays]


def _from_matv5(path: Path) -> list[np.ndarray]:
    """Kernels from a MATLAB v5 file: a cell array, a 2-D kernel or an `(H, W, K)` stack."""
    import scipy.io

    data = scipy.io.loadmat(str(path))
    keys = [k for k in data if not k.startswith("__")]
    key = "kernels" if "kernels" in keys else (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise RobustirError(f"{path}: expected a variable named 'kernels' (or a single variable), found {keys}")
    value = data[key]
    if value.dtype == object:
        return [np.asarray(v, dtype=np.float64) for v in value.reshape(-1, order="F")]
    if value.ndim == 3:
        return [value[:, :, i].astype(np.float64) for i in range(value.shape[2])]
    return [value.astype(np.float64)]


def _from_image(path: Path) -> list[np.ndarray]:
    """One kernel from a grayscale (or colour, converted to luminance) image, any bit depth."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im.convert("F"), dtype=np.float64)
        else:
            arr = np.asarray(im.convert("L"), dtype=np.float64)
    return [arr]


def _from_npy(path: Path) -> list[np.ndarray]:
    """Kernels from a `.npy` file: `(kh, kw)` or a `(K, kh, kw)` stack (never unpickled)."""
    with open(path, "rb") as fh:
        magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
    # np.load treats anything without the .npy header (text, a pickle, an .npz archive) as a pickle and its error
    # then suggests allow_pickle=True: say what the file is not instead, and never offer unsafe loading
    if magic != np.lib.format.MAGIC_PREFIX:
        raise RobustirError(f"kernel file {str(path)!r} is not a valid .npy array file (no NumPy header; save the "
                            f"kernel with numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise RobustirError(f"kernel file {str(path)!r} holds an object (pickled) array, which is never loaded; "
                            f"save a numeric array with numpy.save") from None
    if arr.dtype.kind not in "biuf":
        raise RobustirError(f"kernel file {str(path)!r}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 3:
        return [np.asarray(a, dtype=np.float64) for a in arr]
    return [np.asarray(arr, dtype=np.float64)]


def load_kernels(path: str | os.PathLike) -> list[Tensor]:
    """Load, validate and normalise every kernel in a file (.mat v7.3 or v5, .npy, .png/.bmp/.tif/.jpg).

    Returns:
        A list of float32 `(kh, kw)` tensors, each non-negative and summing to 1.
    """
    path = Path(path)
    if not path.is_file():
        raise RobustirError(f"kernel file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in KERNEL_SUFFIXES:
        raise RobustirError(f"kernel file {str(path)!r}: unsupported type {suffix!r}; expected one of "
                            f"{', '.join(KERNEL_SUFFIXES)}")
    try:
        if suffix == ".mat":
            import h5py

            arrays = _from_hdf5(path) if h5py.is_hdf5(path) else _from_matv5(path)
        elif suffix == ".npy":
            arrays = _from_npy(path)
        else:
            arrays = _from_image(path)
    except RobustirError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable or truncated file
        raise RobustirError(f"kernel file {str(path)!r} could not be read: {exc}") from None
    if not arrays:
        raise RobustirError(f"kernel file {str(path)!r} contains no kernels")
    many = len(arrays) > 1
    return [validate_kernel(torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32),
                            f"{path.name}[{i}]" if many else path.name) for i, a in enumerate(arrays)]


def levin_kernels(root: str | os.PathLike | None = None) -> list[Tensor]:
    """The 8 Levin et al. (2009) kernels (sizes 19, 17, 15, 27, 13, 21, 23, 23) from `<data root>/kernels/Levin09.mat`."""
    from robustir.data.root import data_root

    base = data_root(root)
    assert base is not None  # required=True raises instead
    kernels = load_kernels(base / "kernels" / "Levin09.mat")
    sizes = tuple(k.shape[0] for k in kernels)
    if sizes != LEVIN_SIZES:
        raise RobustirError(f"{base / 'kernels' / 'Levin09.mat'}: expected kernel sizes {LEVIN_SIZES}, got {sizes}")
    return kernels
