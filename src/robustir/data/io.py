"""Image and tensor files: PNG/JPEG/TIFF/BMP in, PNG (8/16-bit) and safetensors (lossless float) out, atomically.

Pillow silently reduces 16-bit colour PNGs to 8 bits, so 16-bit PNGs with colour or alpha are read and written by the
small PNG codec below (non-interlaced only); TIFFs go through tifffile, everything else through Pillow.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from robustir.checks import check_image
from robustir.data.atomic import atomic_path
from robustir.errors import RobustirError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (palette excluded)


# ---------------------------------------------------------------------------------------------------------- reading

def _png_header(path: Path) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) of a PNG file, or None if it is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, ctype, interlace


def _unfilter_rows(raw: bytes, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    """Undo the PNG per-row filters (None/Sub/Up/Average/Paeth); returns (height, stride) uint8."""
    if len(raw) < height * (stride + 1):
        raise RobustirError(f"cannot read image {str(path)!r}: PNG data is truncated")
    rows = np.frombuffer(raw, dtype=np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for r in range(height):
        ftype, line = int(rows[r, 0]), rows[r, 1:]
        if ftype == 0:
            cur = line.copy()
        elif ftype == 1:  # Sub: a running sum per byte position modulo 256
            cur = np.cumsum(line.reshape(-1, bpp).astype(np.uint64), axis=0).astype(np.uint8).reshape(-1)
        elif ftype == 2:
            cur = line + prior
        elif ftype in (3, 4):  # Average / Paeth depend on the reconstructed left byte: sequential
            cur_l = [0] * stride
            line_l, prior_l = line.tolist(), prior.tolist()
            for i in range(stride):
                a = cur_l[i - bpp] if i >= bpp else 0
                b = prior_l[i]
                if ftype == 3:
                    pred = (a + b) >> 1
                else:
                    c = prior_l[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur_l[i] = (line_l[i] + pred) & 0xFF
            cur = np.asarray(cur_l, dtype=np.uint8)
        else:
            raise RobustirError(f"cannot read image {str(path)!r}: invalid PNG filter type {ftype} in row {r}")
        out[r] = cur
        prior = cur
    return out


def _read_png_direct(path: Path, width: int, height: int, depth: int, ctype: int, interlace: int) -> np.ndarray:
    """Decode an 8- or 16-bit non-palette PNG into an (H, W, channels) uint8/uint16 array."""
    if interlace:
        raise RobustirError(f"cannot read image {str(path)!r}: interlaced 16-bit PNGs are not supported "
                            f"(re-save it without interlacing)")
    if depth not in (8, 16) or ctype not in _PNG_CHANNELS:
        raise RobustirError(f"cannot read image {str(path)!r}: PNG bit depth {depth} / colour type {ctype} is not "
                            f"handled by the direct decoder")
    data = path.read_bytes()
    pos, idat, ended = 8, [], False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if len(chunk) < length:
            break
        if kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            ended = True
            break
        pos += 12 + length
    if not idat or not ended:
        raise RobustirError(f"cannot read image {str(path)!r}: PNG file is truncated (no complete image data)")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise RobustirError(f"cannot read image {str(path)!r}: corrupt PNG data ({exc})") from None
    channels, nbytes = _PNG_CHANNELS[ctype], depth // 8
    rows = _unfilter_rows(raw, height, width * channels * nbytes, channels * nbytes, path)
    if depth == 8:
        return rows.reshape(height, width, channels)
    return rows.view(">u2").astype(np.uint16).reshape(height, width, channels)


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
        header = _png_header(p)
        if header is not None and header[2] == 16 and header[3] in (2, 4, 6):
            arr = _read_png_direct(p, header[0], header[1], 16, header[3], header[4])
            if header[3] in (4, 6):
                arr, alpha = arr[..., :-1], True
        else:
            arr, alpha = _read_pillow(p)
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

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _encode_png16(arr: np.ndarray) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint16 array as a 16-bit PNG (filter 'Up' on every row)."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    rows = arr.astype(">u2").reshape(h, w * channels).view(np.uint8)
    up = np.empty_like(rows)
    up[0] = rows[0]
    up[1:] = rows[1:] - rows[:-1]  # uint8 wrap-around is the PNG 'Up' filter
    raw = np.concatenate([np.full((h, 1), 2, dtype=np.uint8), up], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0 if channels == 1 else 2, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
            + _png_chunk(b"IEND", b""))


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
        else:
            tmp.write_bytes(_encode_png16(arr.astype(np.uint16)))


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
