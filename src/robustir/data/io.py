"""Image and tensor files: PNG/JPEG/TIFF/BMP in, PNG (8/16-bit) and safetensors (lossless float) out, atomically.

Pillow silently reduces 16-bit colour PNGs to 8 bits, so 16-bit PNGs are read and written with pypng; TIFFs go
through tifffile, everything else through Pillow.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from robustir.checks import check_image
from robustir.data.atomic import atomic_path
from robustir.errors import RobustirError


# ---------------------------------------------------------------------------------------------------------- reading

def _read_png16(path: Path) -> tuple[np.ndarray, bool] | None:
    """Decode a 16-bit PNG with pypng (any colour type, interlaced or not); None if the file is no 16-bit PNG.

    Returns (H, W[, C]) uint16 samples as stored (sBIT is not applied) and whether an alpha channel was dropped.
    """
    with open(path, "rb") as fh:
        if fh.read(len(png.signature)) != png.signature:
            return None
        fh.seek(0)
        reader = png.Reader(file=fh)
        try:
            reader.preamble()
            if reader.bitdepth != 16:
                return None
            width, height, rows, info = reader.read()
            rows = [np.frombuffer(row, dtype=np.uint16) for row in rows]
        except (png.Error, EOFError, zlib.error, IndexError, ValueError) as exc:  # all mean a damaged file
            raise RobustirError(f"cannot read image {str(path)!r}: truncated or corrupt PNG file ({exc})") from None
    planes = int(info["planes"])
    if len(rows) != height or any(r.size != width * planes for r in rows):
        raise RobustirError(f"cannot read image {str(path)!r}: truncated or corrupt PNG file ({len(rows)} of "
                            f"{height} rows decoded)")
    arr = np.stack(rows).reshape(height, width, planes)
    return (arr[..., :-1], True) if info["alpha"] else (arr, False)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for bad files; all mean "unreadable"
        raise RobustirError(f"cannot read image {str(path)!r}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    return arr


def _read_pillow(path: Path) -> tuple[np.ndarray, bool]:
    """Decode with Pillow; returns (H, W[, C]) array and whether an alpha channel was present (already dropped)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                has_alpha = "transparency" in img.info
                palette = img.getpalette() or []
                gray = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
                img = img.convert("LA" if (gray and has_alpha) else "L" if gray else "RGBA" if has_alpha else "RGB")
                mode = img.mode
            if mode == "1":
                img, mode = img.convert("L"), "L"
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img, mode = img.convert("RGB"), "RGB"
            elif mode in ("PA", "La"):
                img, mode = img.convert("LA"), "LA"
            elif mode in ("RGBa", "RGBX"):
                img, mode = img.convert("RGBA"), "RGBA"
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RobustirError(f"cannot read image {str(path)!r}: {exc}") from None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return arr.astype(np.uint16), False
    if mode == "I":
        # Pillow's 32-bit container for 16-bit gray data in some formats
        if arr.min() < 0 or arr.max() > 65535:
            raise RobustirError(f"cannot read image {str(path)!r}: 32-bit integer pixels outside the 16-bit range")
        return arr.astype(np.uint16), False
    if mode == "F":
        return arr.astype(np.float32), False
    if mode in ("LA", "RGBA"):
        return arr[..., :-1], True
    if mode in ("L", "RGB"):
        return arr, False
    raise RobustirError(f"cannot read image {str(path)!r}: unsupported pixel mode {mode!r}")


def _to_float(arr: np.ndarray, path: Path) -> np.ndarray:
    """Integer pixels -> float32 in [0,1] by their type's full range; float pixels must already lie in [0,1]."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            raise RobustirError(f"cannot read image {str(path)!r}: floating-point pixels must be finite and in [0,1]")
        return out
    raise RobustirError(f"cannot read image {str(path)!r}: unsupported pixel type {arr.dtype} "
                        f"(expected 8- or 16-bit integers or floats in [0,1])")


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file into a float32 tensor (C, H, W) in [0,1], C = 1 (gray) or 3 (RGB).

    8- and 16-bit PNG, JPEG, TIFF and BMP; palette images are expanded; an alpha channel is dropped with a warning.
    """
    p = Path(path)
    if not p.is_file():
        raise RobustirError(f"image file {str(p)!r} does not exist")
    alpha = False
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        arr = _read_tiff(p)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):
            arr, alpha = arr[..., :-1], True
    else:
        direct = _read_png16(p)
        arr, alpha = direct if direct is not None else _read_pillow(p)
    if alpha:
        warnings.warn(f"{p}: alpha channel dropped (robustir works on gray or RGB images)", stacklevel=2)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3) or min(arr.shape[:2]) == 0:
        raise RobustirError(f"cannot read image {str(p)!r}: expected a gray or RGB image, got array shape "
                            f"{arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(_to_float(arr, p)))
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header (cheap)."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        x = load_image(p)
        return int(x.shape[-2]), int(x.shape[-1])
    try:
        with Image.open(p) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise RobustirError(f"cannot read image {str(p)!r}: {exc}") from None
    return int(h), int(w)


# ---------------------------------------------------------------------------------------------------------- writing

def save_image(t: Tensor, path: str | os.PathLike, *, bits: int = 8) -> None:
    """Write a (C, H, W) or (1, C, H, W) tensor in [0,1] (C = 1 or 3) as an 8- or 16-bit PNG, atomically.

    Values are rounded to the nearest level (x * 255 or x * 65535); NaN/inf or values outside [0,1] are refused.
    """
    p = Path(path)
    if bits not in (8, 16):
        raise RobustirError(f"save_image {str(p)!r}: bits must be 8 or 16, got {bits!r}")
    if p.suffix.lower() != ".png":
        raise RobustirError(f"save_image {str(p)!r}: writes PNG files, expected a '.png' name "
                            f"(use save_tensors for lossless float data)")
    if isinstance(t, Tensor) and t.ndim == 4:
        if t.shape[0] != 1:
            raise RobustirError(f"save_image {str(p)!r}: expected one image, got a batch of shape {tuple(t.shape)}")
        t = t[0]
    check_image(t, f"save_image {str(p)!r}", channels=(1, 3), ndim=3)
    levels = 255 if bits == 8 else 65535
    arr = torch.round(t.detach().to("cpu", torch.float64) * levels).numpy()
    arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    with atomic_path(p) as tmp:
        if bits == 8:
            Image.fromarray(arr.astype(np.uint8)).save(tmp, format="PNG")
        else:  # Pillow cannot write 16-bit colour
            h, w = arr.shape[:2]
            writer = png.Writer(w, h, greyscale=arr.ndim == 2, bitdepth=16, compression=6)
            with open(tmp, "wb") as fh:
                writer.write(fh, arr.astype(np.uint16).reshape(h, -1).tolist())


# ---------------------------------------------------------------------------------------------------------- tensors

def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write named tensors losslessly (safetensors) atomically; `metadata` is a str -> str dict stored in the header."""
    from safetensors.torch import save

    p = Path(path)
    if not isinstance(tensors, dict) or not tensors:
        raise RobustirError(f"save_tensors {str(p)!r}: expected a non-empty dict of name -> tensor")
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise RobustirError(f"save_tensors {str(p)!r}: entry {key!r} must map a str to a torch.Tensor, got "
                                f"{type(value).__name__}")
        out[key] = value.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
    meta = None
    if metadata is not None:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise RobustirError(f"save_tensors {str(p)!r}: metadata keys and values must be str (bad keys: {bad})")
        meta = dict(metadata)
    with atomic_path(p) as tmp:
        tmp.write_bytes(_canonical_safetensors(save(out, metadata=meta)))


def _canonical_safetensors(blob: bytes) -> bytes:
    """Rewrite the JSON header with sorted keys: safetensors orders metadata by hash, so equal inputs would otherwise
    give different bytes (and re-runs would not be byte-identical). Tensor data and offsets are unchanged."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment with spaces
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def load_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read all tensors of a safetensors file (bit-exact)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise RobustirError(f"tensor file {str(p)!r} does not exist")
    try:
        return load_file(str(p))
    except Exception as exc:  # safetensors raises SafetensorError/OSError for corrupt or truncated files
        raise RobustirError(f"cannot read tensor file {str(p)!r} (expected safetensors): {exc}") from None


def tensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The str -> str metadata stored in a safetensors file header."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # same reasons as load_tensors
        raise RobustirError(f"cannot read tensor file {str(p)!r} (expected safetensors): {exc}") from None
