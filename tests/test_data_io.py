"""Image and tensor files: real files in every supported format, compared with Pillow / tifffile / numpy."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image

from robustir.data import data_root, image_size, load_image, load_tensors, save_image, save_tensors, tensors_metadata
from robustir.errors import RobustirError

RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, size=shape, dtype=np.uint16)


def _chw(arr: np.ndarray, levels: float) -> torch.Tensor:
    t = torch.from_numpy(arr.astype(np.float32) / levels)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
@pytest.mark.parametrize("shape", [(19, 23), (19, 23, 3)])
def test_lossless_8bit_formats_match_pillow(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    arr = _u8(*shape)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(arr).save(path)
    x = load_image(path)
    assert x.dtype == torch.float32
    assert x.shape == (1 if len(shape) == 2 else 3, 19, 23)
    torch.testing.assert_close(x, _chw(arr, 255.0), rtol=0, atol=0)


def test_jpeg_matches_pillow_decode(tmp_path: Path) -> None:
    arr = _u8(32, 40, 3)
    path = tmp_path / "img.jpg"
    Image.fromarray(arr).save(path, quality=90)
    expected = np.asarray(Image.open(path).convert("RGB"))
    torch.testing.assert_close(load_image(path), _chw(expected, 255.0), rtol=0, atol=0)
    gray = tmp_path / "gray.jpeg"
    Image.fromarray(arr[..., 0]).save(gray)
    assert load_image(gray).shape == (1, 32, 40)


def test_16bit_gray_png_and_tiff(tmp_path: Path) -> None:
    arr = _u16(17, 29)
    Image.fromarray(arr).save(tmp_path / "g.png")
    tifffile.imwrite(tmp_path / "g.tif", arr)
    for name in ("g.png", "g.tif"):
        torch.testing.assert_close(load_image(tmp_path / name), _chw(arr, 65535.0), rtol=0, atol=0)


def test_16bit_rgb_tiff_and_planar(tmp_path: Path) -> None:
    arr = _u16(11, 13, 3)
    tifffile.imwrite(tmp_path / "c.tif", arr, photometric="rgb")
    tifffile.imwrite(tmp_path / "p.tiff", np.moveaxis(arr, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("c.tif", "p.tiff"):
        torch.testing.assert_close(load_image(tmp_path / name), _chw(arr, 65535.0), rtol=0, atol=0)


def test_float_tiff_in_range_and_out_of_range(tmp_path: Path) -> None:
    arr = RNG.random((9, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    torch.testing.assert_close(load_image(tmp_path / "f.tif")[0], torch.from_numpy(arr), rtol=0, atol=0)
    tifffile.imwrite(tmp_path / "bad.tif", arr * 3)
    with pytest.raises(RobustirError, match="bad.tif.*\\[0,1\\]"):
        load_image(tmp_path / "bad.tif")


def test_save_16bit_rgb_png_is_lossless_and_pillow_sees_the_high_byte(tmp_path: Path) -> None:
    arr = _u16(21, 18, 3)
    path = tmp_path / "c16.png"
    save_image(_chw(arr, 65535.0), path, bits=16)
    with open(path, "rb") as fh:
        reader = png.Reader(file=fh)
        reader.preamble()
        assert (reader.bitdepth, reader.color_type, reader.interlace) == (16, 2, 0)
    torch.testing.assert_close(load_image(path), _chw(arr, 65535.0), rtol=0, atol=0)
    with Image.open(path) as img:  # Pillow decodes 16-bit RGB to 8 bits by keeping the most significant byte
        img.verify()  # checks chunk CRCs
    np.testing.assert_array_equal(np.asarray(Image.open(path)), (arr >> 8).astype(np.uint8))


def test_save_16bit_gray_png_read_by_pillow(tmp_path: Path) -> None:
    arr = _u16(12, 15)
    path = tmp_path / "g16.png"
    save_image(_chw(arr, 65535.0), path, bits=16)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
        np.testing.assert_array_equal(np.asarray(img).astype(np.uint16), arr)


def _png16_all_filters(arr: np.ndarray) -> bytes:
    """A 16-bit PNG written independently of pypng: row r uses filter r % 5 (None/Sub/Up/Average/Paeth)."""
    h, w = arr.shape[:2]
    ch = 1 if arr.ndim == 2 else arr.shape[2]
    x = arr.astype(">u2").reshape(h, -1).view(np.uint8).astype(np.int32)
    a = np.pad(x, ((0, 0), (2 * ch, 0)))[:, :-2 * ch]  # the same byte of the pixel to the left
    b = np.pad(x, ((1, 0), (0, 0)))[:-1]  # the byte above
    c = np.pad(b, ((0, 0), (2 * ch, 0)))[:, :-2 * ch]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    preds = [np.zeros_like(x), a, b, (a + b) // 2, paeth]
    raw = b"".join(bytes([r % 5]) + ((x[r] - preds[r % 5][r]) % 256).astype(np.uint8).tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[ch], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_16bit_png_every_colour_type_and_row_filter(tmp_path: Path, mode: str) -> None:
    arr = _u16(11, 9, len(mode))
    path = tmp_path / "f16.png"
    path.write_bytes(_png16_all_filters(arr if len(mode) > 1 else arr[..., 0]))
    expected = _chw(arr[..., :3] if mode.startswith("RGB") else arr[..., :1], 65535.0)
    if "A" in mode:
        with pytest.warns(UserWarning, match="alpha channel dropped"):
            x = load_image(path)
    else:
        x = load_image(path)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    if mode == "L":  # Pillow decodes 16-bit gray exactly: an independent check of the hand-made file
        np.testing.assert_array_equal(np.asarray(Image.open(path)).astype(np.uint16), arr[..., 0])


def test_16bit_natural_gray_png_written_by_pillow(tmp_path: Path) -> None:
    from skimage import data

    arr = data.camera()[:64, :96].astype(np.uint16) * 257  # Pillow picks Sub/Up/Paeth adaptively on natural images
    Image.fromarray(arr).save(tmp_path / "cam16.png")
    torch.testing.assert_close(load_image(tmp_path / "cam16.png"), _chw(arr, 65535.0), rtol=0, atol=0)


@pytest.mark.parametrize("planes", [1, 3])
def test_16bit_png_round_trip_and_interlaced(tmp_path: Path, planes: int) -> None:
    arr = _u16(13, 17, planes) if planes == 3 else _u16(13, 17)
    save_image(_chw(arr, 65535.0), tmp_path / "s.png", bits=16)
    torch.testing.assert_close(load_image(tmp_path / "s.png"), _chw(arr, 65535.0), rtol=0, atol=0)
    path = tmp_path / "adam7.png"
    with open(path, "wb") as fh:
        png.Writer(17, 13, greyscale=planes == 1, bitdepth=16, interlace=True).write(fh, arr.reshape(13, -1).tolist())
    with Image.open(path) as img:
        assert img.info.get("interlace") == 1
        pil = np.asarray(img)
    torch.testing.assert_close(load_image(path), _chw(arr, 65535.0), rtol=0, atol=0)
    # Pillow decodes the same interlaced file independently (16-bit colour to its high byte)
    np.testing.assert_array_equal(pil.astype(np.uint16), arr if planes == 1 else arr >> 8)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_8bit_dropped_with_warning(tmp_path: Path, mode: str) -> None:
    arr = _u8(10, 12, 2 if mode == "LA" else 4)
    path = tmp_path / "a.png"
    Image.fromarray(arr, mode=mode).save(path)
    with pytest.warns(UserWarning, match="a.png: alpha channel dropped"):
        x = load_image(path)
    torch.testing.assert_close(x, _chw(arr[..., :-1] if mode == "RGBA" else arr[..., 0], 255.0), rtol=0, atol=0)


def test_palette_images(tmp_path: Path) -> None:
    rgb = _u8(16, 16, 3)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB"))
    torch.testing.assert_close(load_image(tmp_path / "p.png"), _chw(expected, 255.0), rtol=0, atol=0)
    gray = Image.fromarray(_u8(8, 8)).convert("P")  # a gray palette stays one channel
    gray.save(tmp_path / "pg.png")
    assert load_image(tmp_path / "pg.png").shape == (1, 8, 8)
    bw = Image.fromarray(_u8(6, 5) > 127)
    bw.save(tmp_path / "bw.png")
    torch.testing.assert_close(load_image(tmp_path / "bw.png")[0], torch.from_numpy(np.asarray(bw, np.float32)))


def test_truncated_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    for suffix, size in ((".png", 300), (".jpg", 300), (".tif", 100)):
        full = tmp_path / f"full{suffix}"
        arr = _u8(64, 64, 3)
        (tifffile.imwrite(full, arr) if suffix == ".tif" else Image.fromarray(arr).save(full))
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(full.read_bytes()[:size])
        with pytest.raises(RobustirError, match=f"cut\\{suffix}"):
            load_image(cut)
    arr16 = _u16(30, 30, 3)
    save_image(_chw(arr16, 65535.0), tmp_path / "c16.png", bits=16)
    (tmp_path / "c16cut.png").write_bytes((tmp_path / "c16.png").read_bytes()[:200])
    with pytest.raises(RobustirError, match="c16cut.png.*truncated"):
        load_image(tmp_path / "c16cut.png")
    data = bytearray((tmp_path / "c16.png").read_bytes())
    data[-30] ^= 0xFF  # inside the image data: the chunk checksum no longer matches
    (tmp_path / "c16bad.png").write_bytes(bytes(data))
    with pytest.raises(RobustirError, match="c16bad.png.*corrupt.*[Cc]hecksum"):
        load_image(tmp_path / "c16bad.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(RobustirError, match="text.png"):
        load_image(tmp_path / "text.png")
    with pytest.raises(RobustirError, match="missing.png.*does not exist"):
        load_image(tmp_path / "missing.png")


def test_save_image_8bit_rounds_and_matches_pillow(tmp_path: Path) -> None:
    x = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(1))
    save_image(x.unsqueeze(0), tmp_path / "x.png")
    expected = np.round(x.double().numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), expected)
    assert float((load_image(tmp_path / "x.png") - x).abs().max()) <= 0.5 / 255 + 1e-7
    save_image(x[:1], tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "L"


@pytest.mark.parametrize("bad, match", [
    (torch.full((1, 4, 4), float("nan")), "NaN"),
    (torch.full((3, 4, 4), 1.5), "\\[0, 1\\]"),
    (torch.full((3, 4, 4), -0.1), "\\[0, 1\\]"),
    (torch.zeros(2, 4, 4), "channel"),
    (torch.zeros(4, 4), "shape"),
    (torch.zeros(2, 3, 4, 4), "batch"),
])
def test_save_image_refuses_bad_values_and_leaves_nothing(tmp_path: Path, bad: torch.Tensor, match: str) -> None:
    with pytest.raises(RobustirError, match=match):
        save_image(bad, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_save_image_bad_options(tmp_path: Path) -> None:
    with pytest.raises(RobustirError, match="bits must be 8 or 16"):
        save_image(torch.zeros(1, 2, 2), tmp_path / "a.png", bits=12)
    with pytest.raises(RobustirError, match="'.png'"):
        save_image(torch.zeros(1, 2, 2), tmp_path / "a.jpg")


def test_save_image_overwrite_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    save_image(torch.zeros(1, 3, 3), path)
    with pytest.raises(RobustirError):
        save_image(torch.full((1, 3, 3), float("inf")), path)
    torch.testing.assert_close(load_image(path), torch.zeros(1, 3, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_atomic_outputs_get_the_umask_permissions(tmp_path: Path) -> None:
    """Safetensors, images and text written atomically are not left 0600 by the temporary file they started as."""
    from robustir.data.atomic import atomic_write_text
    from robustir.train.checkpoint import save_weights

    mask = os.umask(0o022)
    os.umask(mask)
    save_tensors({"x": torch.zeros(2)}, tmp_path / "t.safetensors")
    save_image(torch.zeros(1, 3, 3), tmp_path / "i.png")
    atomic_write_text(tmp_path / "n.json", "{}")
    save_weights(tmp_path / "w.safetensors", {"weight": torch.ones(3)})  # safetensors' save_file replaces the file
    for name in ("t.safetensors", "i.png", "n.json", "w.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_tensors_roundtrip_bit_exact(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {"x_adv": torch.rand(2, 3, 8, 8, generator=g), "delta": torch.randn(2, 3, 8, 8, generator=g) * 1e-3,
               "sigma": torch.tensor([25.0, 50.0], dtype=torch.float64), "idx": torch.arange(4)}
    path = tmp_path / "adv.safetensors"
    save_tensors(tensors, path, metadata={"attack": "pgd", "eps": "8/255"})
    back = load_tensors(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        assert torch.equal(back[k], v)
    assert tensors_metadata(path) == {"attack": "pgd", "eps": "8/255"}
    # a view sharing storage with another entry is stored as its own tensor
    base = torch.rand(4, 4, generator=g)
    save_tensors({"a": base, "b": base[1:3]}, path)
    assert torch.equal(load_tensors(path)["b"], base[1:3])


def test_tensors_bad_input(tmp_path: Path) -> None:
    with pytest.raises(RobustirError, match="non-empty dict"):
        save_tensors({}, tmp_path / "a.safetensors")
    with pytest.raises(RobustirError, match="'x'"):
        save_tensors({"x": np.zeros(3)}, tmp_path / "a.safetensors")  # type: ignore[dict-item]
    with pytest.raises(RobustirError, match="metadata"):
        save_tensors({"x": torch.zeros(3)}, tmp_path / "a.safetensors", metadata={"eps": 8})  # type: ignore[dict-item]
    assert not any(tmp_path.iterdir())
    save_tensors({"x": torch.zeros(100)}, tmp_path / "ok.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes()[:60])
    with pytest.raises(RobustirError, match="cut.safetensors"):
        load_tensors(tmp_path / "cut.safetensors")
    with pytest.raises(RobustirError, match="does not exist"):
        load_tensors(tmp_path / "none.safetensors")


def test_image_size_reads_headers(tmp_path: Path) -> None:
    Image.fromarray(_u8(13, 21, 3)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", _u16(5, 7))
    assert image_size(tmp_path / "a.png") == (13, 21)
    assert image_size(tmp_path / "b.tif") == (5, 7)


def test_shared_set12_loads_as_pillow_does(data_root: Path) -> None:
    for name, hw in (("01.png", (256, 256)), ("12.png", (512, 512))):
        path = data_root / "Set12" / name
        x = load_image(path)
        assert x.shape == (1, *hw)
        torch.testing.assert_close(x[0], torch.from_numpy(np.asarray(Image.open(path), np.float32) / 255.0))


def test_data_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTIR_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert data_root(other) == other.resolve()  # --data-root beats the environment
    with pytest.raises(RobustirError, match="--data-root"):
        data_root(tmp_path / "nope")
    monkeypatch.setenv("ROBUSTIR_DATA", str(tmp_path / "gone"))
    with pytest.raises(RobustirError, match="ROBUSTIR_DATA"):
        data_root()
    monkeypatch.delenv("ROBUSTIR_DATA")
    monkeypatch.chdir(tmp_path)
    # from a cwd with no ../shared/data the checkout-relative default is used, or nothing
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    assert data_root(required=False) == (beside_repo.resolve() if beside_repo.is_dir() else None)
    if not beside_repo.is_dir():
        with pytest.raises(RobustirError, match="no data root found"):
            data_root()
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")  # ../shared/data relative to the cwd comes first
    assert data_root() == (tmp_path / "shared" / "data").resolve()
    assert os.environ.get("ROBUSTIR_DATA") is None


def test_tensor_files_are_byte_identical_whatever_the_metadata_order(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    t = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float64)}
    keys = [f"k{i}" for i in range(12)]
    save_tensors(t, tmp_path / "1.safetensors", metadata={k: k.upper() for k in keys})
    save_tensors(dict(reversed(t.items())), tmp_path / "2.safetensors", metadata={k: k.upper() for k in reversed(keys)})
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()
    raw = load_file(str(tmp_path / "1.safetensors"))  # the rewritten header is still valid safetensors
    assert torch.equal(raw["b"], t["b"]) and torch.equal(raw["a"], t["a"])
    assert tensors_metadata(tmp_path / "1.safetensors") == {k: k.upper() for k in keys}
