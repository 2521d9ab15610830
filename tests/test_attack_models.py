"""Attacks on real models (official DnCNN σ=25 on Set12 crops), transfer and robustness curves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT
from torch import nn

from robustir.attacks import evaluate_transfer, preset, robustness_curve, transfer
from robustir.data.io import load_image
from robustir.degradations import add_gaussian_noise
from robustir.metrics import psnr
from robustir.models import restorer


def _set12(root: Path, n: int = 4, size: int = 64) -> torch.Tensor:
    """The first n Set12 images, centre-cropped to size × size (keeps the test fast)."""
    imgs = []
    for i in range(1, n + 1):
        img = load_image(root / "Set12" / f"{i:02d}.png")
        _, h, w = img.shape
        top, left = (h - size) // 2, (w - size) // 2
        imgs.append(img[:, top:top + size, left:left + size])
    return torch.stack(imgs)


@pytest.fixture(scope="module")
def dncnn_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    if DATA_ROOT is None:
        pytest.skip("shared data root not found (set ROBUSTIR_DATA or place it at ../shared/data)")
    root = DATA_ROOT
    weights = root / "weights" / "dncnn" / "kair_dncnn_25.pth"
    if not weights.is_file():
        pytest.skip("official DnCNN weights not in the data root")
    model = restorer("dncnn-s25", weights=weights)
    gt = _set12(root)
    y = add_gaussian_noise(gt, 25, generator=torch.Generator().manual_seed(0))  # not clipped (DnCNN convention)
    return model, gt, y


def _mean_psnr(model: nn.Module, y: torch.Tensor, ref: torch.Tensor) -> float:
    with torch.no_grad():
        return float(psnr(model(y).clamp(0, 1), ref).mean())


@pytest.mark.data
def test_denoising_pgd_strength_on_dncnn(dncnn_setup: tuple) -> None:
    model, gt, y = dncnn_setup
    clean = _mean_psnr(model, y, gt)
    assert clean > 28.0  # the official weights denoise (Set12 σ=25 full images: 30.45 dB)
    linf = preset("denoising_pgd_linf", track_best=False, generator=torch.Generator().manual_seed(1))(model, y, ref=gt)
    drop_linf = clean - _mean_psnr(model, linf.x_adv, gt)
    print(f"DnCNN Set12 01-04 (64x64 crops): clean {clean:.2f} dB, Denoising-PGD L-inf drop {drop_linf:.2f} dB")
    assert drop_linf >= 0.5  # METHODS.md §4.1 calibration: 0.53 dB on full images; 002 reports 0.77 dB
    assert float(linf.delta.abs().max()) <= 1 / 255 + 1e-7
    # L2-Denoising-PGD (ε₂ = ε·√d): its ball contains the L-inf ball, so it is at least as strong (2 small crops)
    ys, gts = y[:2, :, :40, :40], gt[:2, :, :40, :40]
    c2 = _mean_psnr(model, ys, gts)
    kw = {"track_best": False, "steps": 5}
    d_inf = c2 - _mean_psnr(model, preset("denoising_pgd_linf", **kw)(model, ys, ref=gts).x_adv, gts)
    d_l2 = c2 - _mean_psnr(model, preset("denoising_pgd_l2", **kw)(model, ys, ref=gts).x_adv, gts)
    print(f"40x40 crops, 5 steps: drop L-inf {d_inf:.2f} dB, L2 {d_l2:.2f} dB")
    assert d_l2 >= d_inf > 0.2


@pytest.mark.data
def test_bf16_channels_last_attack_is_as_strong_as_float32(dncnn_setup: tuple) -> None:
    # the CPU/GPU fast path (bf16 forward, fp32 loss and update) must not weaken the attack
    model, gt, y = dncnn_setup
    ys, gts = y[:2, :, :48, :48], gt[:2, :, :48, :48]
    clean = _mean_psnr(model, ys, gts)
    kw = {"eps": 4 / 255, "steps": 5, "track_best": False}
    fp32 = preset("pgd", value_range=None, generator=torch.Generator().manual_seed(2), **kw)(model, ys, ref=gts)
    fast = preset("pgd", value_range=None, generator=torch.Generator().manual_seed(2), amp_dtype="bf16",
                  channels_last=True, **kw)(model, ys, ref=gts)
    d32, dfast = clean - _mean_psnr(model, fp32.x_adv, gts), clean - _mean_psnr(model, fast.x_adv, gts)
    print(f"PGD 4/255, 5 steps: drop fp32 {d32:.3f} dB, bf16+channels_last {dfast:.3f} dB")
    assert d32 > 1.0 and abs(dfast - d32) < 0.1 * d32
    assert float((fast.x_adv - ys).abs().max()) <= 4 / 255 + 1e-7


@pytest.mark.data
def test_pgd_beats_random_noise_of_same_norm(dncnn_setup: tuple) -> None:
    model, gt, y = dncnn_setup
    gt, y = gt[:2], y[:2]
    eps = 8 / 255
    clean = _mean_psnr(model, y, gt)
    adv = preset("pgd", eps=eps, alpha=3 / 255, steps=3, value_range=None, track_best=False,
                 generator=torch.Generator().manual_seed(2))(model, y, ref=gt)
    g = torch.Generator().manual_seed(3)
    rand = y + eps * torch.sign(torch.rand(y.shape, generator=g) - 0.5)  # ±ε everywhere: the largest L-inf noise
    drop_pgd, drop_rand = clean - _mean_psnr(model, adv.x_adv, gt), clean - _mean_psnr(model, rand, gt)
    print(f"PGD 8/255 drop {drop_pgd:.2f} dB vs random ±8/255 noise {drop_rand:.2f} dB")
    assert drop_pgd > 3.0 * max(drop_rand, 0.1) and drop_pgd > 3.0


@pytest.mark.data
def test_targeted_attack_moves_output_to_target(dncnn_setup: tuple) -> None:
    model, gt, y = dncnn_setup
    gt, y = gt[:2], y[:2]
    target = gt.clone()
    # a localized edit the denoiser can be driven to (seed 001 §3.6 style): a patch brightened by 10/255
    target[..., 20:44, 20:44] = (target[..., 20:44, 20:44] + 10 / 255).clamp(0, 1)
    region = torch.zeros(1, 1, 64, 64)
    region[..., 20:44, 20:44] = 1
    atk = preset("pgd", eps=12 / 255, alpha=3 / 255, steps=5, targeted=True, value_range=None, region=region,
                 generator=torch.Generator().manual_seed(4))
    r = atk(model, y, target=target)
    crop = (..., slice(20, 44), slice(20, 44))
    with torch.no_grad():
        before = float(psnr(model(y)[crop].clamp(0, 1), target[crop]).mean())
        after = float(psnr(model(r.best_x_adv)[crop].clamp(0, 1), target[crop]).mean())
    print(f"targeted (edited region): PSNR to target {before:.2f} -> {after:.2f} dB")
    assert after > before + 1.0
    assert torch.all(r.loss_history[-1] < r.loss_history[0])


@pytest.mark.data
def test_transfer_and_curve_on_dncnn(dncnn_setup: tuple) -> None:
    model, gt, y = dncnn_setup
    gt, y = gt[:2, :, :32, :32], y[:2, :, :32, :32]
    weak = nn.Identity()  # "no denoiser" target: receives exactly the perturbation
    res = transfer(preset("denoising_pgd_linf", steps=4, generator=torch.Generator().manual_seed(5)), "dncnn",
                   {"dncnn": model, "identity": weak}, y, ref=gt)
    m = res.metrics
    assert torch.all(m["dncnn"]["adv_psnr"] < m["dncnn"]["clean_psnr"])
    assert torch.all(m["dncnn"]["success"])
    same = evaluate_transfer(y, res.crafted.best_x_adv, gt, {"dncnn": model})
    torch.testing.assert_close(same.metrics["dncnn"]["adv_psnr"], m["dncnn"]["adv_psnr"])
    assert len(res.rows()) == 4 and set(res.matrix()) == {"dncnn", "identity"}
    curve = robustness_curve(model, y, gt, torch.tensor([1.0, 4.0]) / 255, steps=3, restarts=2, value_range=None,
                             generator=torch.Generator().manual_seed(6))
    assert curve.psnr.shape == (2, 2) and curve.all_psnr.shape == (2, 2, 2)
    assert torch.all(curve.psnr[1] < curve.psnr[0]) and torch.all(curve.psnr[0] < curve.clean_psnr)
    assert torch.equal(curve.psnr, curve.all_psnr.min(dim=1).values)
    assert len(curve.rows()) == 4
