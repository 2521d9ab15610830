"""PSNR / SSIM / MAE / NCC against scikit-image, torchmetrics and numpy re-derivations of BasicSR's and KAIR's code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torch.autograd import gradcheck
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from robustir.errors import RobustirError
from robustir.metrics import METRICS, mae, ncc, psnr, rgb_to_y, ssim


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC -> (1, C, H, W) float64 in [0, 1]."""
    arr = img.astype(np.float64) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def _degrade(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A realistic restoration-like error: blur plus noise, clipped to [0, 1]."""
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return (blurred + 0.05 * torch.randn(x.shape, generator=_gen(seed), dtype=x.dtype)).clamp(0, 1)


def _hwc(t: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) -> HxW (gray) or HxWxC numpy."""
    arr = t[0].numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def _sk_pair(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> tuple[float, float]:
    a, b = _hwc(x), _hwc(y)
    channel_axis = None if a.ndim == 2 else 2
    return (sk_psnr(b, a, data_range=data_range),
            sk_ssim(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range,
                    channel_axis=channel_axis))


def _check_against_skimage(clean: list[np.ndarray]) -> None:
    for i, img in enumerate(clean):
        ref = _to_tensor(img)
        pred = _degrade(ref, seed=i)
        want_psnr, want_ssim = _sk_pair(pred, ref)
        assert abs(float(psnr(pred, ref)[0]) - want_psnr) < 1e-4
        assert abs(float(ssim(pred, ref)[0]) - want_ssim) < 1e-5
        # 0-255 scale with data_range=255 gives the same numbers
        assert abs(float(psnr(pred * 255, ref * 255, data_range=255)[0]) - want_psnr) < 1e-4
        assert abs(float(ssim(pred * 255, ref * 255, data_range=255)[0]) - want_ssim) < 1e-5
        # float32 inputs (the usual case) stay within the tolerance too
        assert abs(float(psnr(pred.float(), ref.float())[0]) - want_psnr) < 1e-4
        assert abs(float(ssim(pred.float(), ref.float())[0]) - want_ssim) < 1e-5


def test_skimage_parity_set12_gray(data_root: Path) -> None:
    imgs = [np.asarray(Image.open(data_root / "Set12" / f"{i:02d}.png")) for i in (1, 5, 8)]
    assert all(im.ndim == 2 for im in imgs)
    _check_against_skimage(imgs)


def test_skimage_parity_cbsd68_colour(data_root: Path) -> None:
    paths = sorted((data_root / "CBSD68").glob("*.png"))[:2]
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    _check_against_skimage(imgs)


def test_skimage_parity_bundled_images() -> None:
    _check_against_skimage([skdata.camera()[::2, ::2], skdata.astronaut()[100:300, 50:330], skdata.coffee()[::3, ::3]])


def test_batch_is_per_image_and_matches_singles() -> None:
    ref = torch.cat([_to_tensor(skdata.astronaut()[i * 64:(i + 1) * 64, :96]) for i in range(3)])
    pred = _degrade(ref, seed=4)
    for fn in METRICS.values():
        batch = fn(pred, ref)
        assert batch.shape == (3,)
        singles = torch.cat([fn(pred[i:i + 1], ref[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, singles, rtol=0, atol=1e-12)


def test_torchmetrics_parity() -> None:
    ref = torch.cat([_to_tensor(skdata.astronaut()[i * 80:(i + 1) * 80, 40:140]) for i in range(2)])
    pred = _degrade(ref, seed=5)
    want = tm_psnr(pred, ref, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(psnr(pred, ref), want, rtol=0, atol=1e-5)  # torchmetrics sums in float32
    # torchmetrics averages SSIM over the whole (reflect-padded) map; cropping its map to the windows that lie inside
    # the image gives the Wang et al. / skimage convention robustir uses
    _, full = tm_ssim(pred, ref, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
                      reduction="none", return_full_image=True)
    torch.testing.assert_close(ssim(pred, ref), full[..., 5:-5, 5:-5].flatten(1).mean(1), rtol=0, atol=1e-8)


# --- BasicSR and KAIR conventions, re-derived in numpy from their published formulas --------------------------------

def _basicsr_y(img255: np.ndarray) -> np.ndarray:
    """BasicSR `to_y_channel`: BT.601 luma of an RGB image on the 0-255 scale (16 + 65.481 R + 128.553 G + 24.966 B)."""
    rgb = img255 / 255.0
    return rgb @ np.array([65.481, 128.553, 24.966]) + 16.0


def _basicsr_psnr(img: np.ndarray, img2: np.ndarray, crop: int, y: bool) -> float:
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    if crop:
        img, img2 = img[crop:-crop, crop:-crop], img2[crop:-crop, crop:-crop]
    if y:
        img, img2 = _basicsr_y(img), _basicsr_y(img2)
    mse = np.mean((img - img2) ** 2)
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _basicsr_ssim(img: np.ndarray, img2: np.ndarray, crop: int, y: bool) -> float:
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    if crop:
        img, img2 = img[crop:-crop, crop:-crop], img2[crop:-crop, crop:-crop]
    if y:
        img, img2 = _basicsr_y(img)[..., None], _basicsr_y(img2)[..., None]
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    window = np.outer(g / g.sum(), g / g.sum())
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(a: np.ndarray) -> np.ndarray:
        return ndi.correlate(a, window, mode="reflect")[5:-5, 5:-5]  # cv2.filter2D, valid part

    vals = []
    for c in range(img.shape[2]):
        a, b = img[..., c], img2[..., c]
        mu1, mu2 = filt(a), filt(b)
        s1, s2, s12 = filt(a * a) - mu1 ** 2, filt(b * b) - mu2 ** 2, filt(a * b) - mu1 * mu2
        vals.append((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("crop, y", [(0, False), (4, False), (0, True), (4, True)])
def test_basicsr_crop_and_y_channel(crop: int, y: bool) -> None:
    ref8 = skdata.astronaut()[:96, 200:320]
    ref = _to_tensor(ref8)
    pred = _degrade(ref, seed=6)
    pred8 = np.round(_hwc(pred) * 255).astype(np.uint8)
    pred_q = _to_tensor(pred8)  # BasicSR scores the saved 8-bit images
    want_psnr = _basicsr_psnr(pred8, ref8, crop, y)
    want_ssim = _basicsr_ssim(pred8, ref8, crop, y)
    assert abs(float(psnr(pred_q, ref, crop_border=crop, y_channel=y)[0]) - want_psnr) < 1e-6
    assert abs(float(ssim(pred_q, ref, crop_border=crop, y_channel=y)[0]) - want_ssim) < 1e-7
    # quantize=True does that rounding itself
    assert abs(float(psnr(pred, ref, crop_border=crop, y_channel=y, quantize=True)[0]) - want_psnr) < 1e-6


def test_y_channel_values_and_gray_passthrough() -> None:
    white, black = torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)
    assert abs(float(rgb_to_y(white)) - 235 / 255) < 1e-6 and abs(float(rgb_to_y(black)) - 16 / 255) < 1e-6
    gray = _to_tensor(skdata.camera()[:64, :64])
    noisy = _degrade(gray, seed=7)
    assert float(psnr(noisy, gray, y_channel=True)) == float(psnr(noisy, gray))


def test_kair_uint8_rounding() -> None:
    ref8 = skdata.camera()[100:228, 100:228]
    ref = _to_tensor(ref8)
    pred = ref + 0.03 * torch.randn(ref.shape, generator=_gen(8), dtype=ref.dtype)  # unclipped network output
    pred8 = np.uint8(np.round(np.clip(_hwc(pred), 0, 1) * 255.0))  # KAIR util.tensor2uint
    want = sk_psnr(ref8, pred8, data_range=255)
    assert abs(float(psnr(pred, ref, quantize=True)[0]) - want) < 1e-6
    assert abs(float(psnr(pred, ref)[0]) - want) > 1e-3  # the convention matters at this precision


def test_identical_images() -> None:
    x = _to_tensor(skdata.astronaut()[:40, :50])
    assert torch.isinf(psnr(x, x)).all() and float(psnr(x, x)[0]) > 0
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(mae(x, x)[0]) == 0.0
    assert float(ncc(x, x)[0]) == pytest.approx(1.0, abs=1e-12)
    mixed = psnr(torch.cat([x, x]), torch.cat([x, x.flip(-1)]))
    assert math.isinf(float(mixed[0])) and math.isfinite(float(mixed[1]))


def test_mae_and_ncc_values() -> None:
    x = _to_tensor(skdata.camera()[:64, :80])
    torch.testing.assert_close(mae((x + 2 / 255), x), torch.tensor([2.0], dtype=torch.float64), rtol=0, atol=1e-9)
    assert float(mae(x * 255, x * 255 + 3, data_range=255)[0]) == pytest.approx(3.0)
    y = _degrade(x, seed=9)
    a, b = x.flatten().numpy(), y.flatten().numpy()
    want = np.corrcoef(a, b)[0, 1]
    assert float(ncc(y, x)[0]) == pytest.approx(want, abs=1e-12)
    assert float(ncc(0.3 * y + 0.2, x)[0]) == pytest.approx(want, abs=1e-12)  # invariant to gain and offset
    assert float(ncc(1 - y, x)[0]) == pytest.approx(-want, abs=1e-12)  # negative correlation is reported as such
    assert float(ncc(torch.full_like(x, 0.5), x)[0]) == 0.0  # undefined for a constant image: 0 by convention


def test_metrics_are_differentiable() -> None:
    ref = torch.rand(2, 1, 12, 13, generator=_gen(10), dtype=torch.float64)
    pred = (ref + 0.1 * torch.rand(ref.shape, generator=_gen(11), dtype=torch.float64)).requires_grad_()
    for fn in (psnr, ssim, ncc):
        assert gradcheck(lambda p, f=fn: f(p, ref), (pred,))


@pytest.mark.parametrize("call, match", [
    (lambda: psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)), "shape mismatch"),
    (lambda: psnr(torch.rand(1, 8, 8), torch.rand(1, 8, 8)), r"prediction: expected a \(N, C, H, W\)"),
    (lambda: ssim(torch.full((1, 1, 16, 16), float("nan")), torch.rand(1, 1, 16, 16)), "prediction: contains NaN"),
    (lambda: psnr(torch.rand(1, 1, 8, 8), torch.full((1, 1, 8, 8), float("inf"))), "reference: contains NaN"),
    (lambda: psnr(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8), y_channel=True), "y_channel: needs 1 or 3"),
    (lambda: psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), crop_border=4), "crop_border: cropping 4"),
    (lambda: psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), crop_border=-1), "crop_border: expected a non"),
    (lambda: psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), data_range=0), "data_range: expected a positive"),
    (lambda: ssim(torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30)), "at least 11x11"),
    (lambda: ncc(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 8, 8)), "shape mismatch"),
    (lambda: mae(np.zeros((1, 1, 4, 4)), torch.rand(1, 1, 4, 4)), "prediction: expected a torch.Tensor"),
])
def test_bad_inputs(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(RobustirError, match=match):
        call()
